// The run context and its phase markers (requant/phases/context.h).
#include "requant/phases/context.h"

#include <ATen/ATen.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include "requant/error.h"
#include "requant/phases/stop.h"
#include "requant/units.h"

namespace rq::phases {

namespace {

parallel::ReplicaLayout layout_of(const io::Job& j) {
    const auto world = parallel::make_mpi_transport();
    return parallel::replica_layout(world->rank(), world->size(), j.run.replicas);
}

// The pipeline of this rank's replica (run.transport), and the replicas of its stage (MPI).
std::unique_ptr<parallel::Transport> pipeline_of(const io::Job&                 j,
                                                 const parallel::ReplicaLayout& l) {
    if (l.replicas == 1) return parallel::make_transport(j.run.transport);
    if (j.run.transport != io::TransportKind::Mpi)
        throw ConfigError("run.replicas > 1 needs run.transport = \"mpi\"");
    return parallel::make_mpi_group_transport(l.replica, l.stage);
}

}  // namespace

RunContext::RunContext(const io::Job& j, bool restart_)
    : layout_(layout_of(j)),
      transport_(pipeline_of(j, layout_)),
      across_(layout_.replicas == 1
                  ? parallel::make_mpi_transport(true)
                  : parallel::make_mpi_group_transport(layout_.stage, layout_.replica)),
      job(j),
      restart(restart_),
      t(*transport_),
      across(*across_),
      rank(transport_->rank()),
      P(transport_->size()),
      replica(layout_.replica),
      R(layout_.replicas),
      world_rank(layout_.world_rank),
      ckpt(j.model.path),
      out(j.run.out) {}

RunContext::~RunContext() = default;

bool RunContext::all_ranks(bool mine) {
    at::Tensor z = at::tensor({mine ? 0.0 : 1.0}, at::kDouble);
    t.allreduce_sum(z)->wait();
    across.allreduce_sum(z)->wait();
    return z.item<double>() == 0;
}

void RunContext::mark(const std::string& phase, double s) {
    const ProcessMemory m = process_memory();
    log->info("phase {} done on this rank ({:.1f} s; RSS {:.2f} GiB, peak so far {:.2f} GiB)",
              phase, s, m.rss / kGiB, m.peak / kGiB);
    all_ranks(true);  // every rank has written its files for the phase
    st.mark(phase, s);
    if (lead()) store::write_run_state(out, st);
    if (all_ranks(!stop_requested())) return;
    log->info("stopping on a signal after phase {}", phase);
    throw Stopped("stopped on a signal after phase " + phase + "; " + out +
                  " holds the state: run the same command again to resume");
}

}  // namespace rq::phases
