#pragma once
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/io/hf_checkpoint.h"
#include "requant/io/job.h"
#include "requant/model/llama.h"
#include "requant/parallel/replicas.h"
#include "requant/parallel/schedule.h"
#include "requant/parallel/transport.h"
#include "requant/parallel/watchdog.h"
#include "requant/store/run_lock.h"
#include "requant/store/state.h"

namespace spdlog {
class logger;
}

// What every phase of `requant-dist run|sensitivity` works on (DESIGN.md §3): the job, the
// transport, this rank's stage, the tokenized data, the run state, the per-rank log and the
// phase markers. One per process; prepare() fills it.

namespace rq::phases {

struct EvalSet {
    std::string name;    // file name, the key in results.json
    at::Tensor  tokens;  // int64 [n, T]
};

// One rank's work in one phase of this invocation: the CPU seconds of its compute (pipeline
// passes and quantization; sharing cores with other ranks does not inflate them), the sums over
// replicas (seconds, bytes this rank contributed, count) and the bytes sent to pipeline neighbours.
// results.json "load" lists them per phase and rank.
struct PhaseLoad {
    int     world_rank = 0, replica = 0, stage = 0;
    double  cpu_s = 0, reduce_s = 0;
    int64_t reduced_bytes = 0, reductions = 0, sent_bytes = 0;

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {
        // clang-format off
        ar & world_rank & replica & stage & cpu_s & reduce_s & reduced_bytes & reductions & sent_bytes;
        // clang-format on
    }
};

class RunContext {
    parallel::ReplicaLayout              layout_;     // first: the transports use it
    std::unique_ptr<parallel::Transport> transport_;  // this replica's pipeline
    std::unique_ptr<parallel::Transport> across_;     // this stage in every replica

    PhaseLoad last_;  // the totals at the previous mark()
    PhaseLoad totals() const;

  public:
    RunContext(const io::Job& job, bool restart);
    ~RunContext();

    const io::Job&       job;
    const bool           restart;
    std::set<int64_t>    dump_layers;  // --dump-layer (store/dump.h)
    parallel::Transport& t;            // the pipeline of this rank's replica: rank = stage
    parallel::Transport& across;       // the ranks of this stage in every replica, in replica order
    const int            rank, P;      // this rank's stage, stages per replica
    const int            replica, R;   // this rank's replica, replicas (run.replicas)
    const int            world_rank;
    io::HfCheckpoint     ckpt;
    const std::string    out;              // the run directory
    std::unique_ptr<store::RunLock> lock;  // rank 0: held from prepare to the process's end

    store::RunState      st;       // rank 0 writes it to run.h5; every rank holds its records
    std::string          fp;       // the run's combined fingerprint (ties layer files to it)
    at::Tensor           calib;    // int64 [N, T], on every rank
    at::Tensor           holdout;  // int64 [H, T]: requant.holdout's sequences, left out of calib
    std::vector<EvalSet> evals;    // on every rank
    std::unique_ptr<model::Stage> stage;     // this rank's layers
    parallel::ScheduleOptions     schedule;  // run.microbatch, in-flight cap
    int64_t stats_passes = 1;  // passes that collect X^T X (run.mem_gib; parallel::stats_passes)
    std::unique_ptr<parallel::PipelineRunner> runner;    // runs `schedule`
    std::shared_ptr<spdlog::logger>           log;       // OUT/logs/rank-NNN.log
    std::unique_ptr<parallel::Watchdog>       watchdog;  // run.rank_timeout, more than 1 rank
    std::map<std::string, double>             seconds;   // phases measured in this invocation
    double compute_s = 0;  // CPU seconds of compute outside the runners (quantization), so far
    std::map<std::string, std::vector<PhaseLoad>> loads;  // coordinator: per phase, per rank

    const model::StageRange& range() const { return stage->range(); }
    // The coordinator: world rank 0 (replica 0, stage 0) writes run.h5, the checkpoint and
    // results.json, and prints progress.
    bool lead() const { return world_rank == 0; }
    // Replica 0 writes this stage's layer files (every replica holds the same state).
    bool writes() const { return replica == 0; }
    // Records `phase` once every rank has written its part of it (rank 0 writes run.h5); a
    // stop request (phases/stop.h) ends the run here, every rank together (throws Stopped).
    void mark(const std::string& phase, double seconds);
    bool all_ranks(bool mine);  // collective: true on every rank (of the world) when true on all
};

}  // namespace rq::phases
