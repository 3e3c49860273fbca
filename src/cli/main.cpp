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
#include "requant/dist/control.h"
#include "requant/dist/mpi_env.h"
#include "requant/io/error.h"
#include "requant/pipeline/stop.h"

#ifndef RQ_VERSION
#define RQ_VERSION "unknown"
#endif

namespace {

std::string version_text() {
    return std::string("requant-dist ") + RQ_VERSION + "\n  libtorch " + rq::cli::torch_version() +
           " (CPU)\n  BLAS: " + rq::cli::blas_info() + "\n  " + rq::cli::nccl_info();
}

}  // namespace

int main(int argc, char** argv) {
    rq::cli::reexec_with_runtime_env(argv);
    CLI::App app{"requant-dist: distributed PQI/ReQuant quantization of Llama models"};
    app.set_version_flag("--version", version_text);
    app.require_subcommand(1);

    rq::cli::EvalOptions eo;
    auto*                eval =
        app.add_subcommand("eval", "Mean next-token loss and perplexity of a model on data");
    eval->add_option("--model", eo.model, "Hugging Face model folder (config.json, *.safetensors)")
        ->required()
        ->check(CLI::ExistingDirectory);
    eval->add_option("--data", eo.data,
                     "Text file (tokenized with the model's tokenizer.model, no BOS) or a token "
                     "dataset (.safetensors with an integer 'tokens' tensor [n, L])")
        ->required()
        ->check(CLI::ExistingFile);
    auto* seq_len_opt = eval->add_option("--seq-len", eo.seq_len, "Window length for text data")
                            ->capture_default_str()
                            ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
    eval->add_option("--max-seqs", eo.max_seqs,
                     "Evaluate only the first n sequences (default: all)")
        ->check(CLI::PositiveNumber);
    eval->add_option("--batch", eo.batch, "Sequences per forward pass")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    eval->add_option("--threads", eo.threads,
                     "Intra-op threads (results depend on it; fixed default)")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    eval->add_option("--json", eo.json, "Write loss, perplexity, tokens, seqs to this JSON file");

    rq::cli::RunOptions ro;
    auto*               run =
        app.add_subcommand("run", "Quantize a model as a job file says, across the MPI ranks");
    run->add_option("job", ro.job, "Job file (TOML)")->required()->check(CLI::ExistingFile);
    run->add_option("--out", ro.out, "Run directory (overrides run.out)");
    run->add_option("--set", ro.overrides, "Override one job key: section.key=value (repeatable)");

    auto* sens = app.add_subcommand(
        "sensitivity",
        "Quantize as the job says, then the sensitivity study: per-weight PQI (HDF5) and its "
        "self-test, Taylor terms, per-layer and lambda-path dF, tables and plots under OUT/report");
    sens->add_option("job", ro.job, "Job file (TOML)")->required()->check(CLI::ExistingFile);
    sens->add_option("--out", ro.out, "Run directory (overrides run.out)");
    sens->add_option("--set", ro.overrides, "Override one job key: section.key=value (repeatable)");

    run->add_flag("--restart", ro.restart,
                  "Start over: remove the run's state (run.h5, layers/, model.requant.h5) first");

    rq::cli::InspectOptions io;
    auto*                   insp = app.add_subcommand(
                          "inspect", "Summarise a model.requant.h5: bits/weight, memory, sparse counts per layer");
    insp->add_option("file", io.file, "model.requant.h5")->required()->check(CLI::ExistingFile);
    insp->add_flag("--json", io.json, "Print the summary as JSON");

    rq::cli::PlanOptions po;
    auto*                plan = app.add_subcommand(
                       "plan", "Stage split and per-rank memory of a job, from config.json alone");
    plan->add_option("job", po.job, "Job file (TOML)")->required()->check(CLI::ExistingFile);
    plan->add_option("--ranks", po.ranks, "Ranks (default: the fewest that fit in --mem-gib)")
        ->check(CLI::Range(1, 100000));
    plan->add_option("--config", po.config, "config.json to plan for (default: the job's model)")
        ->check(CLI::ExistingFile);
    plan->add_option("--mem-gib", po.mem_gib, "Memory per rank, GiB (to choose --ranks)")
        ->capture_default_str();
    plan->add_option("--set", po.overrides, "Override one job key: section.key=value");

    rq::cli::ExportOptions xo;
    auto*                  exp = app.add_subcommand(
                         "export", "Write a dequantized Hugging Face model (safetensors) from a finished run");
    exp->add_option("run_dir", xo.from, "Run directory (or its model.requant.h5)")
        ->required()
        ->check(CLI::ExistingPath);
    exp->add_option("--out", xo.out, "HF model folder to write")->required();
    exp->add_option("--dtype", xo.dtype, "Weights dtype")
        ->capture_default_str()
        ->check(CLI::IsMember({"f32", "bf16", "f16"}));

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;  // --help/--version exit 0; bad usage exits 2
    }
    // One MPI job: every rank parses the same command line; rank 0's parse is broadcast so all
    // ranks act on identical options. An error on any rank is printed by that rank and ends
    // every rank (MPI_Abort): a rank that died alone would leave its peers hung.
    int                             rank = 0, size = 1;
    std::optional<rq::dist::MpiEnv> mpi;  // outlives the handlers below: abort needs MPI alive
    if (*run || *sens) {                  // before MPI_Init: its threads inherit the mask
        const char* g = std::getenv("RQ_STOP_GRACE");
        rq::pipeline::install_stop_signals(g ? std::atof(g) : 60.0);
    }
    try {
        mpi.emplace(&argc, &argv);
        if (*run || *sens) {  // again: MPI_Init may have put its own handlers in place
            const char* g = std::getenv("RQ_STOP_GRACE");
            rq::pipeline::install_stop_signals(g ? std::atof(g) : 60.0);
        }
        rank = mpi->rank();
        size = mpi->size();
        spdlog::set_pattern(size > 1 ? "[%H:%M:%S %l rank " + std::to_string(rank) + "] %v"
                                     : "[%H:%M:%S %l] %v");
        if (rank != 0) spdlog::set_level(spdlog::level::warn);
        int rc = 0;
        if (*eval) {
            eo.seq_len_given = seq_len_opt->count() > 0;
            rq::dist::broadcast_object(eo, 0, rank);
            rc = rq::cli::run_eval(eo);
        } else if (*run || *sens) {
            ro.sensitivity = bool(*sens);
            rq::dist::broadcast_object(ro, 0, rank);
            rc = rq::cli::run_run(ro);
        } else if (*insp) {
            rc = rq::cli::run_inspect(io);
        } else if (*exp) {
            rc = rq::cli::run_export(xo);
        } else if (*plan) {
            rc = rq::cli::run_plan(po);
        }
        return rc;
    } catch (const rq::pipeline::Stopped& e) {  // every rank stops here together
        if (rank == 0) std::fprintf(stderr, "requant-dist: %s\n", e.what());
        return rq::pipeline::kStoppedExit;
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
    if (size > 1) rq::dist::abort_job(1);
    return 1;
}
