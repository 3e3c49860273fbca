// requant-dist: command-line entry point. Parses arguments, dispatches to a subcommand, and is
// the one place that turns an error into a message and an exit code.
#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <optional>

#include "requant/cli/commands.h"
#include "requant/cli/sysinfo.h"
#include "requant/error.h"
#include "requant/model/tensor_cache.h"
#include "requant/parallel/control.h"
#include "requant/parallel/mpi_env.h"
#include "requant/phases/stop.h"

#ifndef RQ_VERSION
#define RQ_VERSION "unknown"
#endif

namespace {

std::string version_text() {
    return std::string("requant-dist ") + RQ_VERSION + "\n  libtorch " + rq::cli::torch_version() +
           " (CPU)\n  BLAS: " + rq::cli::blas_info() + "\n  " + rq::cli::nccl_info();
}

// Every subcommand, its options and where they land.
struct Commands {
    rq::cli::EvalOptions    eo;
    rq::cli::RunOptions     ro;
    rq::cli::InspectOptions io;
    rq::cli::PlanOptions    po;
    rq::cli::ExportOptions  xo;
    CLI::App *eval = nullptr, *run = nullptr, *sens = nullptr, *insp = nullptr, *plan = nullptr,
             *exp        = nullptr;
    CLI::Option* seq_len = nullptr;
    bool         runs() const { return *run || *sens; }  // the commands that write a run
};

void add_eval(CLI::App& app, Commands& c) {
    c.eval = app.add_subcommand("eval", "Mean next-token loss and perplexity of a model on data");
    c.eval
        ->add_option("--model", c.eo.model,
                     "Hugging Face model folder (config.json, *.safetensors)")
        ->required()
        ->check(CLI::ExistingDirectory);
    c.eval
        ->add_option(
            "--data", c.eo.data,
            "Text file (UTF-8, tokenized with the model's byte-level BPE tokenizer.json or "
            "its tokenizer.model, no BOS) or a token dataset (.safetensors with an "
            "integer 'tokens' tensor [n, L])")
        ->required()
        ->check(CLI::ExistingFile);
    c.seq_len = c.eval->add_option("--seq-len", c.eo.seq_len, "Window length for text data")
                    ->capture_default_str()
                    ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
    c.eval
        ->add_option("--max-seqs", c.eo.max_seqs,
                     "Evaluate only the first n sequences (default: all)")
        ->check(CLI::PositiveNumber);
    c.eval
        ->add_option("--batch", c.eo.batch,
                     "Sequences per forward pass (a run's run.microbatch reproduces its "
                     "perplexity bit for bit)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    c.eval
        ->add_option("--threads", c.eo.threads,
                     "Intra-op threads (results depend on it; fixed default)")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    c.eval->add_option("--json", c.eo.json,
                       "Write loss, perplexity, tokens, seqs to this JSON file");
}

void add_run(CLI::App& app, Commands& c) {
    c.run  = app.add_subcommand("run", "Quantize a model as a job file says, across the MPI ranks");
    c.sens = app.add_subcommand(
        "sensitivity",
        "Quantize as the job says, then the sensitivity study: per-weight PQI (HDF5) and its "
        "self-test, Taylor terms, per-layer and lambda-path dF, tables and plots under OUT/report");
    for (CLI::App* a : {c.run, c.sens}) {
        a->add_option("job", c.ro.job, "Job file (TOML)")->required()->check(CLI::ExistingFile);
        a->add_option("--out", c.ro.out, "Run directory (overrides run.out)");
        a->add_option("--set", c.ro.overrides,
                      "Override one job key: section.key=value (repeatable)");
    }
    c.run->add_flag("--restart", c.ro.restart,
                    "Start over: remove the run's state (run.h5, layers/, model.requant.h5) first");
    c.run
        ->add_option("--dump-layer", c.ro.dump_layers,
                     "Write layer L's quantization (its weights, statistics, dense codes and "
                     "W_hat) to OUT/dump/layer-L.h5 when this run quantizes it (repeatable)")
        ->check(CLI::NonNegativeNumber);
}

void add_tools(CLI::App& app, Commands& c) {
    c.insp = app.add_subcommand(
        "inspect", "Summarise a model.requant.h5: bits/weight, memory, sparse counts per layer");
    c.insp->add_option("file", c.io.file, "model.requant.h5")->required()->check(CLI::ExistingFile);
    c.insp->add_flag("--json", c.io.json, "Print the summary as JSON");

    c.plan = app.add_subcommand("plan",
                                "Stage split and per-rank memory of a job, from config.json alone");
    c.plan->add_option("job", c.po.job, "Job file (TOML)")->required()->check(CLI::ExistingFile);
    c.plan->add_option("--ranks", c.po.ranks, "Ranks (default: the fewest that fit in --mem-gib)")
        ->check(CLI::Range(1, 100000));
    c.plan
        ->add_option("--config", c.po.config, "config.json to plan for (default: the job's model)")
        ->check(CLI::ExistingFile);
    c.plan->add_option("--mem-gib", c.po.mem_gib, "Memory per rank, GiB (to choose --ranks)")
        ->capture_default_str();
    c.plan->add_option("--set", c.po.overrides, "Override one job key: section.key=value");

    c.exp = app.add_subcommand(
        "export", "Write a dequantized Hugging Face model (safetensors) from a finished run");
    c.exp->add_option("run_dir", c.xo.from, "Run directory (or its model.requant.h5)")
        ->required()
        ->check(CLI::ExistingPath);
    c.exp->add_option("--out", c.xo.out, "HF model folder to write")->required();
    c.exp->add_option("--dtype", c.xo.dtype, "Weights dtype")
        ->capture_default_str()
        ->check(CLI::IsMember({"f32", "bf16", "f16"}));
    c.exp
        ->add_option("--max-shard-size", c.xo.max_shard_size,
                     "Largest weights file (5GB, 500MB, 2GiB, ... or bytes); more than one gets "
                     "model.safetensors.index.json")
        ->capture_default_str();
}

// Stop on SIGUSR1/SIGTERM at a phase boundary (phases/stop.h), with RQ_STOP_GRACE seconds.
void install_stops() {
    const char* g = std::getenv("RQ_STOP_GRACE");
    rq::phases::install_stop_signals(g ? std::atof(g) : 60.0);
}

// One MPI job: every rank parses the same command line; rank 0's options are broadcast so all
// ranks act on identical ones.
int dispatch(Commands& c, int rank) {
    if (*c.eval) {
        c.eo.seq_len_given = c.seq_len->count() > 0;
        rq::parallel::broadcast_object(c.eo, 0, rank);
        return rq::cli::run_eval(c.eo);
    }
    if (c.runs()) {
        c.ro.sensitivity = bool(*c.sens);
        rq::parallel::broadcast_object(c.ro, 0, rank);
        return rq::cli::run_run(c.ro);
    }
    if (*c.insp) return rq::cli::run_inspect(c.io);
    if (*c.exp) return rq::cli::run_export(c.xo);
    return rq::cli::run_plan(c.po);
}

}  // namespace

int main(int argc, char** argv) {
    rq::cli::reexec_with_runtime_env(argv);
    CLI::App app{"requant-dist: distributed PQI/ReQuant quantization of Llama models"};
    app.set_version_flag("--version", version_text);
    app.require_subcommand(1);
    Commands c;
    add_eval(app, c);
    add_run(app, c);
    add_tools(app, c);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;  // --help/--version exit 0; bad usage exits 2
    }
    // An error on any rank is printed by that rank and ends every rank (MPI_Abort): a rank that
    // died alone would leave its peers hung.
    int                                 rank = 0, size = 1;
    std::optional<rq::parallel::MpiEnv> mpi;  // outlives the handlers below: abort needs MPI alive
    if (c.runs()) install_stops();            // before MPI_Init: its threads inherit the mask
    try {
        mpi.emplace(&argc, &argv);
        if (c.runs()) install_stops();  // again: MPI_Init may have put its own handlers in place
        rank = mpi->rank();
        size = mpi->size();
        rq::model::install_tensor_cache(rq::model::tensor_cache_cap_from_env());
        spdlog::set_pattern(size > 1 ? "[%H:%M:%S %l rank " + std::to_string(rank) + "] %v"
                                     : "[%H:%M:%S %l] %v");
        if (rank != 0) spdlog::set_level(spdlog::level::warn);
        return dispatch(c, rank);
    } catch (const rq::phases::Stopped& e) {  // every rank stops here together
        if (rank == 0) std::fprintf(stderr, "requant-dist: %s\n", e.what());
        return rq::phases::kStoppedExit;
    } catch (const rq::Error& e) {
        std::fprintf(stderr, "%srequant-dist: error: %s\n",
                     size > 1 ? ("[rank " + std::to_string(rank) + "] ").c_str() : "", e.what());
    } catch (const c10::Error& e) {
        std::fprintf(stderr, "[rank %d] requant-dist: error (libtorch): %s\n", rank,
                     e.what_without_backtrace());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "[rank %d] requant-dist: internal error: %s\n", rank, e.what());
    }
    std::fflush(stderr);
    if (size > 1) rq::parallel::abort_job(1);
    return 1;
}
