// The run context and its phase markers (requant/phases/context.h).
#include "requant/phases/context.h"

#include <ATen/ATen.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include "requant/error.h"
#include "requant/parallel/control.h"
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

PhaseLoad RunContext::totals() const {
    PhaseLoad p;
    p.world_rank    = world_rank;
    p.replica       = replica;
    p.stage         = rank;
    p.cpu_s         = parallel::runners_busy_cpu_s() + compute_s;
    p.reduce_s      = across.traffic().reduce_s;
    p.reduced_bytes = across.traffic().reduced_bytes;
    p.reductions    = across.traffic().reductions;
    p.sent_bytes    = t.traffic().sent_bytes;
    return p;
}

void RunContext::mark(const std::string& phase, double s) {
    const ProcessMemory m   = process_memory();
    const PhaseLoad     now = totals();
    PhaseLoad           d   = now;  // this phase's share
    d.cpu_s -= last_.cpu_s;
    d.reduce_s -= last_.reduce_s;
    d.reduced_bytes -= last_.reduced_bytes;
    d.reductions -= last_.reductions;
    d.sent_bytes -= last_.sent_bytes;
    last_ = now;
    log->info(
        "phase {} done on this rank ({:.1f} s, {:.1f} s computing; {} sums over replicas: "
        "{:.1f} s, {:.1f} MiB; {:.1f} MiB sent; RSS {:.2f} GiB, peak so far {:.2f} GiB)",
        phase, s, d.cpu_s, d.reductions, d.reduce_s, double(d.reduced_bytes) / kMiB,
        double(d.sent_bytes) / kMiB, m.rss / kGiB, m.peak / kGiB);
    auto all = parallel::gather_objects(d, 0);
    if (lead()) loads[phase] = std::move(all);
    all_ranks(true);  // every rank has written its files for the phase
    st.mark(phase, s);
    if (lead()) store::write_run_state(out, st);
    if (all_ranks(!stop_requested())) return;
    log->info("stopping on a signal after phase {}", phase);
    throw Stopped("stopped on a signal after phase " + phase + "; " + out +
                  " holds the state: run the same command again to resume");
}

}  // namespace rq::phases
