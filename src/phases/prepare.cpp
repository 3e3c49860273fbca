// Phase prepare: run directory, fingerprint, tokenized data, this rank's stage
// (requant/phases/phases.h).
#include <ATen/ATen.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "requant/error.h"
#include "requant/io/dataset.h"
#include "requant/model/evaluate.h"
#include "requant/model/tensor_cache.h"
#include "requant/parallel/control.h"
#include "requant/parallel/memory_budget.h"
#include "requant/parallel/memory_plan.h"
#include "requant/parallel/mpi_env.h"
#include "requant/parallel/partition.h"
#include "requant/phases/phases.h"
#include "requant/units.h"

namespace rq::phases {
namespace {

namespace fs = std::filesystem;

std::string which_differs(const store::Fingerprint& a, const store::Fingerprint& b) {
    std::string s;
    if (a.model != b.model) s += "the model";
    if (a.data != b.data) s += std::string(s.empty() ? "" : ", ") + "the data";
    if (a.job != b.job) s += std::string(s.empty() ? "" : ", ") + "the job";
    return s;
}

// --restart: removes what a run writes (and nothing else the folder may hold).
void clear_run(const std::string& out) {
    for (const char* f : {"run.h5", "model.requant.h5", "results.json"}) fs::remove(out + "/" + f);
    fs::remove_all(out + "/layers");
}

// OUT/logs/rank-NNN.log: what this rank did (phases, layers, rounds), for every rank; the
// console shows rank 0 only.
std::shared_ptr<spdlog::logger> open_rank_log(const std::string& out, int rank, int P) {
    char name[32];
    std::snprintf(name, sizeof name, "rank-%03d.log", rank);
    fs::create_directories(out + "/logs");
    auto log = std::make_shared<spdlog::logger>(
        name, std::make_shared<spdlog::sinks::basic_file_sink_mt>(out + "/logs/" + name));
    log->set_pattern("[%Y-%m-%d %H:%M:%S] %v");
    log->flush_on(spdlog::level::info);
    log->info("rank {} of {} starts", rank, P);
    return log;
}

io::TokenData load_tokens(const std::string& path, const RunContext& ctx, int64_t max_seqs) {
    io::TokenData d = io::load_eval_data(path, ctx.ckpt.dir(), ctx.job.data.seq_len, max_seqs,
                                         ctx.job.run.threads);
    model::check_token_ids(d.tokens, ctx.ckpt.config().n_vocab, io::base_name(path));
    return d;
}

// Rank 0: the state of the run directory, or a new one with the data tokenized. The directory
// is locked first: one run at a time.
store::RunState open_state(RunContext& ctx, Clock::time_point t0) {
    const io::Job&  job = ctx.job;
    std::error_code ec;
    fs::create_directories(ctx.out, ec);
    if (ec) throw IoError(ctx.out + ": cannot create the run directory: " + ec.message());
    ctx.lock = std::make_unique<store::RunLock>(ctx.out);
    if (ctx.restart) clear_run(ctx.out);
    const store::Fingerprint fp  = store::fingerprint(job, ctx.ckpt.dir());
    auto                     old = store::read_run_state(ctx.out);
    if (old && !(old->fp == fp))
        throw StateError(ctx.out + " holds a run of another job (" + which_differs(old->fp, fp) +
                         " differ); use --restart to start over there, or another --out");
    if (old) {
        std::string done;
        for (const auto& [k, v] : old->done_s) done += " " + k;
        spdlog::info("resuming {}: done:{}", ctx.out, done);
        return std::move(*old);
    }
    store::RunState st;
    st.fp              = fp;
    io::TokenData c    = load_tokens(job.data.calibration, ctx, job.data.calibration_seqs);
    st.calib           = c.tokens;
    st.calib_available = c.n_available;
    if (c.n_available < job.data.calibration_seqs)
        spdlog::warn(
            "calibration: {} has {} sequences, fewer than calibration_seqs = {}; using all",
            io::base_name(job.data.calibration), c.n_available, job.data.calibration_seqs);
    for (const auto& path : job.data.eval) {
        st.eval_names.push_back(io::base_name(path));
        st.eval_tokens.push_back(load_tokens(path, ctx, job.data.eval_max_seqs).tokens);
    }
    st.mark("prepare", since(t0));
    store::write_run_state(ctx.out, st);
    return st;
}

// The coordinator's int64 tensor on every rank: to the first stage of every replica, then
// down each pipeline (collective).
at::Tensor from_lead(RunContext& ctx, const at::Tensor& mine) {
    at::Tensor x = mine;
    if (ctx.rank == 0) x = parallel::broadcast_tensor(ctx.across, mine, 0, at::kLong);
    return parallel::broadcast_tensor(ctx.t, x, 0, at::kLong);
}

// Before anything is loaded: this rank's planned peak (parallel/memory_plan.h) and the tensor
// cache's cap against the room the tightest memory limit leaves it (parallel/memory_budget.h).
// Refused with the numbers and the rank count that would fit unless run.mem_check = false; the
// tensor cache is shrunk when only its cap does not fit. Returns the room, or nothing when no
// limit is known.
std::optional<double> check_memory(const RunContext& ctx, const parallel::MemoryPlan& plan) {
    const io::Job&              job = ctx.job;
    const parallel::LimitInputs in{job.run.mem_gib, parallel::ranks_on_node(),
                                   parallel::slurm_memory_env(), ""};
    const double                startup = process_memory().rss;  // libraries, MPI
    const auto                  limit   = parallel::tightest(parallel::memory_limits(in), startup);
    if (!limit) return std::nullopt;
    const double  need  = plan.ranks[std::size_t(ctx.rank)].total();
    const double  room  = parallel::plan_room(*limit, startup);
    const int64_t cache = model::tensor_cache_cap_from_env();
    if (ctx.lead())
        spdlog::info("memory: planned peak {} + {} tensor cache per rank; room {} ({}{})",
                     gib_text(plan.max_total()), gib_text(double(cache)), gib_text(room),
                     limit->detail,
                     room < limit->bytes ? " less " + gib_text(startup) + " held at start-up" : "");
    if (need + double(cache) <= room) return room;
    if (need <= room) {  // the cache is optional: it keeps what the budget leaves over
        if (cache > 0) model::install_tensor_cache(std::max<int64_t>(1, int64_t(room - need)));
        return room;
    }
    const std::string msg =
        "host " + parallel::host_name() + ": this rank's planned peak is " + gib_text(need) +
        " (requant-dist plan), more than the " + gib_text(room) + " it may use (" + limit->detail +
        (room < limit->bytes ? ", less " + gib_text(startup) + " held at start-up"
                             : std::string()) +
        ")";
    if (!job.run.mem_check) {
        spdlog::warn("{}; starting anyway (run.mem_check = false)", msg);
        return room;
    }
    const int S = parallel::ranks_for_memory(ctx.ckpt.config(), job, room / kGiB);
    throw ResourceError(msg + "; " +
                        (S > 0 ? std::to_string(S * ctx.R) + " ranks would fit in " +
                                     gib_text(room) + " each (requant-dist plan JOB --mem-gib " +
                                     gib_number(room) + ")"
                               : std::string("even one rank per layer would not fit")) +
                        ", or set run.mem_check = false to start anyway");
}

}  // namespace

// Whether this rank keeps each layer's graph from forward to backward (1 forward + 1 backward
// per pass) instead of recomputing it (2 + 1): when the plan with kept graphs fits the room, or
// no limit is known; the tensor cache then keeps what the room leaves beside it. The results
// are the same bit for bit either way.
bool keep_graphs(const RunContext& ctx, const parallel::MemoryPlan& plan,
                 std::optional<double> room) {
    const double  need  = plan.ranks[std::size_t(ctx.rank)].total_keeping_graph();
    const int64_t cache = model::tensor_cache_cap_from_env();
    const bool    keep  = !room || need <= *room;
    if (keep && room && cache > 0 && need + double(cache) > *room)
        model::install_tensor_cache(std::max<int64_t>(1, int64_t(*room - need)));
    if (ctx.lead())
        spdlog::info("backward: {} (planned peak with kept graphs {}{})",
                     keep ? "keeps each layer's graph" : "recomputes each layer's forward",
                     gib_text(plan.ranks[0].total_keeping_graph()),
                     room ? ", room " + gib_text(*room) : std::string(", no memory limit known"));
    return keep;
}

void prepare(RunContext& ctx) {
    // This rank's planned memory (config.json and the job only), for the checks below.
    const parallel::MemoryPlan mem = parallel::plan_memory(ctx.ckpt.config(), ctx.job, ctx.P);
    const auto room = check_memory(ctx, mem);  // a rank that does not fit throws here, and ends
    ctx.all_ranks(true);                       // the job: the others wait, so nothing is written
    const auto          t0       = Clock::now();
    const ProcessMemory at_start = process_memory();  // libraries and MPI, before any data
    const io::Job&      job      = ctx.job;
    if (ctx.lead()) ctx.st = open_state(ctx, t0);
    // Every rank holds the records of the finished phases and the data.
    std::string fp      = ctx.lead() ? ctx.st.fp.combined() : "";
    std::string records = ctx.lead() ? ctx.st.records() : "";
    parallel::broadcast_bytes(fp, 0);
    parallel::broadcast_bytes(records, 0);
    if (!ctx.lead()) ctx.st.set_records(records);
    ctx.fp    = fp;
    ctx.calib = from_lead(ctx, ctx.st.calib);
    if (job.requant.holdout > 0) {  // Alg. 2's held-out stop: the last H sequences
        const int64_t N = ctx.calib.size(0);
        const int64_t H = std::max<int64_t>(1, std::llround(double(N) * job.requant.holdout));
        if (H >= N)
            throw ConfigError("requant.holdout = " + std::to_string(job.requant.holdout) +
                              " leaves none of the " + std::to_string(N) +
                              " calibration sequences to fit on");
        ctx.holdout = ctx.calib.narrow(0, N - H, H).contiguous();
        ctx.calib   = ctx.calib.narrow(0, 0, N - H).contiguous();
    }
    ctx.evals.resize(job.data.eval.size());
    for (std::size_t i = 0; i < ctx.evals.size(); ++i) {
        ctx.evals[i].name   = io::base_name(job.data.eval[i]);
        ctx.evals[i].tokens = from_lead(ctx, ctx.lead() ? ctx.st.eval_tokens[i] : at::Tensor());
    }
    ctx.log = open_rank_log(ctx.out, ctx.world_rank, ctx.P * ctx.R);
    if (job.run.rank_timeout > 0 && ctx.P * ctx.R > 1) {
        ctx.watchdog = std::make_unique<parallel::Watchdog>(parallel::WatchdogOptions{
            ctx.out + "/logs", ctx.world_rank, ctx.P * ctx.R, job.run.rank_timeout, 0});
        ctx.all_ranks(true);  // every first heartbeat is written before anyone watches
    }
    if (ctx.R > 1)
        ctx.log->info("replica {} of {}, stage {} of {}", ctx.replica, ctx.R, ctx.rank, ctx.P);
    ctx.log->info("RSS at start-up {:.3f} GiB", at_start.rss / kGiB);

    const auto& cfg   = ctx.ckpt.config();
    int64_t     max_t = ctx.calib.size(1);
    for (const auto& e : ctx.evals) max_t = std::max(max_t, e.tokens.size(1));
    const parallel::PipelinePlan plan = parallel::plan_pipeline(cfg, ctx.P, ctx.calib.size(1));
    if (ctx.lead()) {
        spdlog::info(
            "run: {} on {} ranks ({} replica(s) x {} stage(s)), {} {}-bit g{}; "
            "calibration {} x {} tokens{}",
            job.model.path, ctx.P * ctx.R, ctx.R, ctx.P, io::name(job.quant.method), job.quant.bits,
            job.quant.group_size, ctx.calib.size(0), ctx.calib.size(1),
            ctx.holdout.defined() ? " (+ " + std::to_string(ctx.holdout.size(0)) + " held out)"
                                  : std::string());
        if (ctx.P > 1) std::fprintf(stderr, "%s", parallel::format_plan(plan).c_str());
    }
    const auto& range = plan.stages[std::size_t(ctx.rank)].range;
    ctx.stage         = std::make_unique<model::Stage>(
        cfg, model::load_stage_weights(ctx.ckpt, range, at::kFloat), max_t);
    ctx.schedule          = {job.run.microbatch, 0};
    ctx.schedule.replica  = ctx.replica;
    ctx.schedule.replicas = ctx.R;
    ctx.schedule.across   = &ctx.across;
    const int64_t n_micro = (ctx.calib.size(0) + job.run.microbatch - 1) / job.run.microbatch;
    if (n_micro < ctx.R)
        throw ConfigError("run.replicas = " + std::to_string(ctx.R) + " needs at least as many " +
                          "calibration microbatches; there are " + std::to_string(n_micro) +
                          " (data.calibration_seqs / run.microbatch)");
    if (job.run.mem_gib > 0) {
        ctx.schedule.max_in_flight = parallel::in_flight_cap(mem, job.run.mem_gib * kGiB);
        ctx.stats_passes           = mem.stats_passes;
        if (ctx.lead())
            spdlog::info(
                "run.mem_gib = {}: at most {} microbatches in flight per rank, X^T X "
                "in {} calibration pass(es)",
                job.run.mem_gib, ctx.schedule.max_in_flight, ctx.stats_passes);
    }
    ctx.schedule.keep_graph = keep_graphs(ctx, mem, room);
    ctx.runner = std::make_unique<parallel::PipelineRunner>(*ctx.stage, ctx.t, ctx.schedule);
    ctx.seconds["prepare"] = since(t0);
}

}  // namespace rq::phases
