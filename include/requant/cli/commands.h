#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

// The requant-dist subcommands. Each takes parsed options, does its work, and throws rq::Error
// on failure; main() turns errors into one message and a non-zero exit.

namespace rq::cli {

struct EvalOptions {
    std::string model;                  // HF model folder
    std::string data;                   // text file or token dataset (.safetensors)
    int64_t     seq_len       = 256;    // windows for text data
    bool        seq_len_given = false;  // --seq-len was on the command line
    int64_t     max_seqs      = -1;     // -1 = all
    int64_t     batch         = 8;      // sequences per forward pass
    int         threads       = 2;      // intra-op threads (fixed default: results depend on it)
    std::string json;                   // results file, empty = none

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {  // broadcast from rank 0 to every rank
        // clang-format off
        ar & model & data & seq_len & seq_len_given & max_seqs & batch & threads & json;
        // clang-format on
    }
};

int run_eval(const EvalOptions& o);

struct RunOptions {
    std::string              job;                  // JOB.toml
    std::string              out;                  // --out, overrides run.out when set
    std::vector<std::string> overrides;            // --set section.key=value
    bool                     sensitivity = false;  // the `sensitivity` command: run + PQI
    bool                     restart     = false;  // --restart: drop the run's old state
    std::vector<int64_t>     dump_layers;          // --dump-layer L: store/dump.h

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {
        // clang-format off
        ar & job & out & overrides & sensitivity & restart & dump_layers;
        // clang-format on
    }
};

int run_run(const RunOptions& o);

// `inspect FILE.h5 [--json]`: the summary of a model.requant.h5 (rank 0 only).
struct InspectOptions {
    std::string file;
    bool        json = false;
};
int run_inspect(const InspectOptions& o);

// `plan JOB.toml [--ranks P] [--config FILE] [--mem-gib G]` (rank 0 only).
struct PlanOptions {
    std::string              job, config;
    std::vector<std::string> overrides;
    int                      ranks   = 0;  // 0: the least count that fits in mem_gib
    double                   mem_gib = 64;
};
int run_plan(const PlanOptions& o);

// `export RUN_DIR --out HF_DIR [--dtype f32|bf16|f16]` (rank 0 only).
struct ExportOptions {
    std::string from, out, dtype = "f32";
    std::string max_shard_size = "5GB";  // cli/args.h parse_byte_size
};
int run_export(const ExportOptions& o);

}  // namespace rq::cli
