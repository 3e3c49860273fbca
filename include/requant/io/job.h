#pragma once
#include <string>
#include <vector>

#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

// The job file (TOML) of `requant-dist run|sensitivity|plan`: one table per concern, every key
// checked (unknown keys, wrong types and out-of-range values are errors), relative paths made
// absolute against the job file's folder, and `--set section.key=value` overrides applied before
// validation. DESIGN.md §7 lists the keys; this header is their reference. Reading models or data
// is not done here: a Job only names them.

namespace rq::io {

// The closed vocabularies of a job. Strings are parsed into these once, in parse_job; after that
// no code compares names. name() gives the job-file spelling (messages, job.toml, results.json).
enum class QuantMethod { Rtn, Gptq, Awq, SqueezeLlm, Qtip };
enum class QtipCode { Hyb, OneMad, ThreeInst };  // QTIP's trellis codes (PAPER.md §9.5)
enum class KmeansInit { PlusPlus, Multistart };  // SqueezeLLM's k-means start(s)
enum class AwqLoss { Block, Linear };            // what AWQ's scale search scores
enum class OutlierSelect { None, Fixed, Adaptive, Random };
enum class SignificantSelect { None, Fisher, Pqi, Random };  // None: never in a file (ratio 0)
enum class SelectScope { Global, Linear };
enum class PqiRule { Left, Right, Midpoint, Trapezoid };
enum class TransportKind { Mpi, Nccl };
constexpr PqiRule kPqiRules[] = {PqiRule::Left, PqiRule::Right, PqiRule::Midpoint,
                                 PqiRule::Trapezoid};

const char* name(QuantMethod v);        // rtn | gptq | awq | squeezellm | qtip
const char* name(QtipCode v);           // hyb | 1mad | 3inst
const char* name(KmeansInit v);         // kmeans++ | multistart
const char* name(AwqLoss v);            // block | linear
const char* name(OutlierSelect v);      // none | fixed | adaptive | random
const char* name(SignificantSelect v);  // none | fisher | pqi | random
const char* name(SelectScope v);        // global | linear
const char* name(PqiRule v);            // left | right | midpoint | trapezoid
const char* name(TransportKind v);      // mpi | nccl

struct JobModel {
    std::string path;  // Hugging Face model folder (required)

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {
        // clang-format off
        ar & path;
        // clang-format on
    }
};

struct JobData {
    std::string              calibration;             // text file or tokens .safetensors (required)
    int                      calibration_seqs = 128;  // first n windows in file order, >= 1
    int                      seq_len          = 256;  // tokens per window, >= 2
    std::vector<std::string> eval;                    // text or token files to evaluate on
    int                      eval_max_seqs = 64;      // windows per eval file; -1 = all

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {
        // clang-format off
        ar & calibration & calibration_seqs & seq_len & eval & eval_max_seqs;
        // clang-format on
    }
};

struct JobQuant {
    QuantMethod method     = QuantMethod::Rtn;
    int         bits       = 4;      // 2..8
    int         group_size = 128;    // G; 0 = per output channel, else >= 2 (any value)
    bool        sequential = false;  // layers see quantized inputs; file default: gptq only
    double      damp       = 0.01;   // GPTQ: dampening, fraction of mean diag(H), [0, 1)
    bool        act_order  = false;  // GPTQ: columns in order of decreasing diag(H)
    int         block_size = 128;    // GPTQ: lazy-batch block width, >= 1
    // GPTQ: every group's grid fitted up front in the original column order (the reference's
    // --static-groups; with act_order, the groups stay contiguous: no g_idx).
    bool static_groups = false;
    // GPTQ with sequential: within a layer, q/k/v, then o, then gate/up, then down, each
    // calibrated with the ones before it already quantized (the reference's --true-sequential).
    bool true_sequential = true;
    int  awq_grid        = 20;  // AWQ: grid points searched for the scale exponent, >= 1
    // AWQ: every (n / awq_samples)-th input row is kept for the clipping search (the
    // reference's n_sample_token = 512) and, with awq_loss = linear, the scale search.
    int awq_samples = 512;
    // AWQ: the scale search scores the output of the block the linears feed, on every
    // calibration token (the reference), or the summed outputs of the linears themselves on the
    // sampled rows (this project's earlier variant).
    AwqLoss awq_loss     = AwqLoss::Block;
    int     kmeans_iters = 50;  // SqueezeLLM: weighted k-means iterations, >= 1
    // SqueezeLLM: the reference's one weighted k-means++ start (seeded by kmeans_seed, >= 0),
    // or this project's three starts kept at fp16 (quant/squeezellm.h).
    KmeansInit kmeans_init = KmeansInit::PlusPlus;
    int        kmeans_seed = 0;
    // QTIP (bits 2..4; group_size must be 0, its default for qtip; never sequential): the code,
    // and the seed of the sign vectors and Kronecker factors, >= 0.
    QtipCode qtip_code = QtipCode::Hyb;
    int      qtip_seed = 0;

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {
        // clang-format off
        ar & method & bits & group_size & sequential & damp & act_order & block_size
           & static_groups & awq_grid & awq_samples & kmeans_iters & kmeans_init & kmeans_seed
           & qtip_code & qtip_seed & awq_loss & true_sequential;
        // clang-format on
    }
};

struct JobRequant {
    double              outlier_ratio      = 0;  // fraction of weights kept as outliers, [0, 1)
    OutlierSelect       outlier_select     = OutlierSelect::None;              // Alg. 1: adaptive
    std::vector<double> outlier_candidates = {0, 0.25, 0.5, 1, 1.5, 2, 3, 4};  // Alg. 1: x ratio
    double              significant_ratio  = 0;  // fraction kept as significant weights, [0, 1)
    double              step_ratio         = 0;  // fraction detached per Alg. 2 step, [0, 1)
    SelectScope         scope              = SelectScope::Global;     // where ratios are budgeted
    SignificantSelect   significant_select = SignificantSelect::Pqi;  // pqi | fisher | random
    bool                signed_ranking     = true;  // rank by signed PQI (false: by |PQI|)
    // Alg. 2's held-out stop: this fraction of the calibration sequences (the last
    // round(N * holdout), at least 1) is left out of every fit; a detach round is kept only if
    // it lowers the mean loss on them, and the first that does not is undone and ends Alg. 2.
    // 0: off. [0, 1); needs significant_select = pqi.
    double holdout = 0;

    // The selections in effect: None where the ratio is 0.
    OutlierSelect outliers() const {
        return outlier_ratio > 0 ? outlier_select : OutlierSelect::None;
    }
    SignificantSelect significant() const {
        return significant_ratio > 0 ? significant_select : SignificantSelect::None;
    }
    // Alg. 2's rounds run after quantization (pqi, or random for the ablation).
    bool detaches() const {
        return significant() == SignificantSelect::Pqi ||
               significant() == SignificantSelect::Random;
    }

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {
        // clang-format off
        ar & outlier_ratio & outlier_select & outlier_candidates & significant_ratio & step_ratio
           & scope & significant_select & signed_ranking & holdout;
        // clang-format on
    }
};

struct JobSensitivity {
    int     nodes = 32;                 // quadrature intervals N of the PQI integral, >= 1
    PqiRule rule  = PqiRule::Midpoint;  // left | right | midpoint | trapezoid
    // `requant-dist sensitivity` only: the whole study (Taylor terms, per-layer and lambda-path
    // loss changes, every rule's convergence on the grid k/(2N), tables and plots). false: PQI
    // and its self-test alone.
    bool                study   = true;
    std::vector<double> lambdas = {1e-3, 5e-3, 1e-2, 5e-2, 1e-1, 1.0};  // path points, (0, 1]
    double              hvp_eps = 1e-4;  // central-difference step of the Hessian term, (0, 1)

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {
        // clang-format off
        ar & nodes & rule & study & lambdas & hvp_eps;
        // clang-format on
    }
};

struct JobRun {
    std::string   out        = "";  // run folder; default <job folder>/runs/<job file stem>
    int           microbatch = 4;   // sequences per pipeline microbatch, >= 1
    int           threads    = 2;   // intra-op threads per rank, >= 1
    TransportKind transport  = TransportKind::Mpi;
    // Per-rank memory budget in GiB that bounds how many microbatches 1F1B keeps in flight
    // (parallel/memory_plan.h); 0: no budget. Shapes the schedule only, never a result, so it
    // is left out of the job fingerprint: a run may resume under another budget.
    double mem_gib = 0;
    // Data-parallel pipelines: the ranks are `replicas` x stages, each replica runs its share
    // of the calibration microbatches and the sums are reduced in replica order. Results are
    // bitwise the same for every stage count at fixed replicas (a fingerprinted key).
    int replicas = 1;
    // Refuse to start when a rank's planned peak exceeds the memory it may use (run.mem_gib,
    // Slurm's --mem or --mem-per-cpu, the cgroup limit, physical memory; parallel/memory_budget.h).
    bool mem_check = true;
    // Seconds a rank may go without a sign of life (its heartbeat) before the job is ended,
    // naming it (parallel/watchdog.h); 0: never. Busy ranks keep beating: only a stopped, hung
    // or lost process trips it.
    double rank_timeout = 300;

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {
        // clang-format off
        ar & out & microbatch & threads & transport & mem_gib & replicas & mem_check & rank_timeout;
        // clang-format on
    }
};

// A parsed, validated job. Paths are absolute; every default is resolved.
struct Job {
    JobModel       model;
    JobData        data;
    JobQuant       quant;
    JobRequant     requant;
    JobSensitivity sensitivity;
    JobRun         run;

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {
        // clang-format off
        ar & model & data & quant & requant & sensitivity & run;
        // clang-format on
    }
};

bool operator==(const Job& a, const Job& b);
bool operator!=(const Job& a, const Job& b);

// Reads and parses a job file. Throws IoError if it cannot be read, else as parse_job.
Job load_job(const std::string& path, const std::vector<std::string>& overrides = {});

// Parses job TOML. `origin_path` names the file in messages, gives the folder that relative
// paths resolve against and the stem of the default run.out. `overrides` are "section.key=value"
// strings, value parsed as TOML (a bare word that is not TOML is a string), applied in order
// before validation. Throws FormatError (TOML syntax) or ConfigError (unknown table or key,
// wrong type, missing required key, value out of range, malformed override).
Job parse_job(const std::string& toml_text, const std::string& origin_path,
              const std::vector<std::string>& overrides = {});

// Every key of `job` as TOML, in a fixed order (tables and keys as above): written to
// OUT/job.toml and used to fingerprint runs. parse_job of the result gives back an equal Job.
std::string job_to_toml(const Job& job);

}  // namespace rq::io
