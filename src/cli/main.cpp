// requant-dist: command-line entry point. Parses arguments, dispatches to a subcommand, and is
// the one place that turns an error into a message and an exit code.
#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <optional>

#include "requant/cli/commands.h"
#include "requant/cli/sysinfo.h"
#include "requant/dist/control.h"
#include "requant/dist/mpi_env.h"
#include "requant/io/error.h"

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
    try {
        mpi.emplace(&argc, &argv);
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
        }
        return rc;
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
