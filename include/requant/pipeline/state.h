#pragma once
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "requant/dist/transport.h"
#include "requant/io/h5.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/io/job.h"
#include "requant/pipeline/calibrate.h"

// The resumable state of a run directory (DESIGN.md §3-4):
//   OUT/run.h5                      run-wide: fingerprint, tokenized data, phase log, results of
//                                   finished phases (rank 0 writes it)
//   OUT/layers/layer-NNN.h5         one decoder layer's decomposition (its owner writes it)
//   OUT/layers/layer-NNN.detach-KK.h5  the weights Alg. 2 picked in round KK of that layer
// Every file is written under a temporary name, fsynced and renamed; every dataset carries the
// SHA-256 of its bytes. A layer file is tied to its run by the fingerprint; one that fails to
// open, fails its digest or belongs to another run is redone (with a warning), never used.

namespace rq::pipeline {

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

// run.h5. `log` holds the phase markers and what later phases need: "phases" (name -> seconds,
// in order of completion), plus results ("ppl_fp", "requant", "detach_rounds", ...).
struct RunState {
    Fingerprint              fp;
    at::Tensor               calib;  // int64 [n, T]
    int64_t                  calib_available = 0;
    std::vector<std::string> eval_names;
    std::vector<at::Tensor>  eval_tokens;
    nlohmann::json           log = nlohmann::json::object();

    bool done(const std::string& phase) const;
    void mark(const std::string& phase, double seconds);
};

std::string run_state_path(const std::string& out);
// Reads OUT/run.h5; nullopt when there is none. Throws StateError when it is damaged (with the
// way out: --restart).
std::optional<RunState> read_run_state(const std::string& out);
void                    write_run_state(const std::string& out, const RunState& s);

// A run directory's state is refused (it is another model's, data's or job's, or damaged).
class StateError : public Error {
  public:
    using Error::Error;
};

// One layer's decomposition in an HDF5 group `prefix` (also the layout of model.requant.h5):
//   <prefix>/<linear>/codes (int32, bit-packed rows), scales + zeros | lut (fp16), g_idx,
//   in_scale, outliers/{indptr,indices,values}, significant/{...}; attributes bits, group_size,
//   rows, cols. Sparse groups are absent when the part is empty.
void       write_layer_quant(io::H5File& f, const std::string& prefix, const LayerQuant& q);
LayerQuant read_layer_quant(const io::H5File& f, const std::string& prefix);

std::string layer_state_path(const std::string& out, int64_t layer);
std::string detach_state_path(const std::string& out, int64_t layer, int round);
// Writes layer `layer`'s decomposition (stage "quantized").
void write_layer_state(const std::string& out, int64_t layer, const LayerQuant& q,
                       const std::string& fp);
// The layer's decomposition if a sound file of this run is there; otherwise nullopt (a
// damaged or foreign file is reported and ignored).
std::optional<LayerQuant> read_layer_state(const std::string& out, int64_t layer,
                                           const std::string& fp);
// The weights picked in one detach round of one layer (bool masks, kLinears order).
void write_detach_state(const std::string& out, int64_t layer, int round,
                        const std::array<at::Tensor, 7>& picked, const std::string& fp);
std::optional<std::array<at::Tensor, 7>> read_detach_state(const std::string& out, int64_t layer,
                                                           int round, const std::string& fp);

// Resume of Alg. 2: the largest n <= done such that every rank reads back rounds 1..n of all
// its layers (collective), and in `picked` the union of those rounds' picks ([stage layer]
// [kLinears], bool, shaped like `like`). A lost or damaged round file means redoing from it.
int read_detach_rounds(dist::Transport& t, const std::string& out, int64_t layer_begin,
                       const std::vector<std::array<at::Tensor, 7>>& like, int done,
                       const std::string& fp, std::vector<std::array<at::Tensor, 7>>& picked);

}  // namespace rq::pipeline
