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

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {
        // clang-format off
        ar & job & out & overrides & sensitivity;
        // clang-format on
    }
};

int run_run(const RunOptions& o);

}  // namespace rq::cli
