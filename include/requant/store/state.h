#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "requant/decompose/detach.h"
#include "requant/decompose/layer.h"
#include "requant/io/h5.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/io/job.h"
#include "requant/parallel/transport.h"

// The resumable state of a run directory (DESIGN.md §3-4):
//   OUT/run.h5                      run-wide: fingerprint, tokenized data, phase log, results of
//                                   finished phases (rank 0 writes it)
//   OUT/layers/layer-NNN.h5         one decoder layer's decomposition (its owner writes it)
//   OUT/layers/layer-NNN.detach-KK.h5  the weights Alg. 2 picked in round KK of that layer
// Every file is written under a temporary name, fsynced and renamed; every dataset carries the
// SHA-256 of its bytes. A layer file is tied to its run by the fingerprint; one that fails to
// open, fails its digest or belongs to another run is redone (with a warning), never used.

namespace rq::store {

// What a run is made of, as SHA-256 digests: the model (config.json, the safetensors index
// and every shard's header and size: the tensor bytes are not read), the calibration and
// evaluation files (their bytes), and the job (every key that shapes the result: run.out and
// the file paths, whose contents are covered above, are left out).
struct Fingerprint {
    std::string model, data, job;
    std::string combined() const;  // one digest of the three
    bool        operator==(const Fingerprint& o) const {
               return model == o.model && data == o.data && job == o.job;
    }
};
Fingerprint fingerprint(const io::Job& job, const std::string& model_dir);

// Perplexity per evaluation file name, and "calibration".
using Perplexities = std::map<std::string, double>;

// run.h5: the tokenized data and what the finished phases recorded for later ones and for
// results.json. Stored as the run.h5 attribute `log` (JSON: "done", "phases", "ppl_fp",
// "ppl_q", "requant", "detach"), which tests and users read with h5dump.
struct RunState {
    Fingerprint              fp;
    at::Tensor               calib;  // int64 [n, T]
    int64_t                  calib_available = 0;
    std::vector<std::string> eval_names;
    std::vector<at::Tensor>  eval_tokens;

    std::map<std::string, double> done_s;   // phase marker -> seconds; the phase is finished
    std::map<std::string, double> phase_s;  // seconds of every phase and sub-phase
    std::optional<Perplexities>   ppl_fp;   // baseline
    std::optional<Perplexities>   ppl_q;    // evaluate
    nlohmann::json requant = nlohmann::json::object();  // results.json's "requant" so far
    int            detach_rounds_done = 0;              // Alg. 2 rounds with their files
    std::vector<decompose::DetachRound> detach_rounds;

    bool done(const std::string& phase) const { return done_s.count(phase) > 0; }
    void mark(const std::string& phase, double seconds);
    // The records above as run.h5's `log` (JSON text), and back (rank 0 sends them to all).
    std::string records() const;
    void        set_records(const std::string& log);
};

std::string run_state_path(const std::string& out);
// Reads OUT/run.h5; nullopt when there is none. Throws StateError when it is damaged or was
// written by an older requant-dist (with the way out: --restart).
std::optional<RunState> read_run_state(const std::string& out);
void                    write_run_state(const std::string& out, const RunState& s);

// One layer's decomposition in an HDF5 group `prefix` (also the layout of model.requant.h5):
//   <prefix>/<linear>/codes (int32, bit-packed rows), scales + zeros | lut (fp16), g_idx,
//   in_scale, out_scale (AWQ, quant/quantized.h), outliers/{indptr,indices,values},
//   significant/{...}; attributes bits, group_size, rows, cols. Sparse groups are absent when
//   the part is empty. QTIP's linears hold instead of codes: trellis (uint8
//   [O'/16, I'/16, 32 K]: each 16 x 16 tile's 256 K bits, most
//   significant first), signs_rows / signs_cols (uint8, one bit per padded row / column, 1 = -1,
//   numpy.packbits order) and attributes code (hyb | 1mad | 3inst), wscale, factor_seed.
void write_layer_quant(io::H5File& f, const std::string& prefix, const decompose::LayerQuant& q);
decompose::LayerQuant read_layer_quant(const io::H5File& f, const std::string& prefix);

std::string layer_state_path(const std::string& out, int64_t layer);
std::string detach_state_path(const std::string& out, int64_t layer, int round);
// Writes layer `layer`'s decomposition (stage "quantized") and, when given, its quantize-time
// errors as /errors.
void write_layer_state(const std::string& out, int64_t layer, const decompose::LayerQuant& q,
                       const std::string& fp, const decompose::LayerErrors* errors = nullptr);
// A layer's errors as stored: double [kNumLinears, 6], columns objective_dense, objective,
// proxy_dense, proxy, weight_dense, weight (NaN where not computable); and back.
at::Tensor             errors_tensor(const decompose::LayerErrors& e);
decompose::LayerErrors errors_from_tensor(const at::Tensor& t);
// The errors in a layer file of this run; nullopt when absent (a file of an older version).
std::optional<decompose::LayerErrors> read_layer_errors(const std::string& out, int64_t layer,
                                                        const std::string& fp);
// The layer's decomposition if a sound file of this run is there; otherwise nullopt (a
// damaged or foreign file is reported and ignored).
std::optional<decompose::LayerQuant> read_layer_state(const std::string& out, int64_t layer,
                                                      const std::string& fp);
// The weights picked in one detach round of one layer (bool masks, kLinears order).
void write_detach_state(const std::string& out, int64_t layer, int round,
                        const model::LayerTensors& picked, const std::string& fp);
std::optional<model::LayerTensors> read_detach_state(const std::string& out, int64_t layer,
                                                     int round, const std::string& fp);

// Resume of Alg. 2: the largest n <= done such that every rank reads back rounds 1..n of all
// its layers (collective), and in `picked` the union of those rounds' picks ([stage layer]
// [kLinears], bool, shaped like `like`). A lost or damaged round file means redoing from it.
// With replicas, `across` (this stage's ranks in every replica) agrees too.
int read_detach_rounds(parallel::Transport& t, const std::string& out, int64_t layer_begin,
                       const model::StageTensors& like, int done, const std::string& fp,
                       model::StageTensors& picked, parallel::Transport* across = nullptr);

}  // namespace rq::store
