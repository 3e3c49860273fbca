// The run context and its phase markers (requant/phases/context.h).
#include "requant/phases/context.h"

#include <ATen/ATen.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include "requant/phases/stop.h"
#include "requant/units.h"

namespace rq::phases {

RunContext::RunContext(const io::Job& j, bool restart_)
    : transport_(parallel::make_transport(j.run.transport)),
      job(j),
      restart(restart_),
      t(*transport_),
      rank(transport_->rank()),
      P(transport_->size()),
      ckpt(j.model.path),
      out(j.run.out) {}

RunContext::~RunContext() = default;

bool RunContext::all_ranks(bool mine) {
    at::Tensor z = at::tensor({mine ? 0.0 : 1.0}, at::kDouble);
    t.allreduce_sum(z)->wait();
    return z.item<double>() == 0;
}

void RunContext::mark(const std::string& phase, double s) {
    const ProcessMemory m = process_memory();
    log->info("phase {} done on this rank ({:.1f} s; RSS {:.2f} GiB, peak so far {:.2f} GiB)",
              phase, s, m.rss / kGiB, m.peak / kGiB);
    all_ranks(true);  // every rank has written its files for the phase
    st.mark(phase, s);
    if (rank == 0) store::write_run_state(out, st);
    if (all_ranks(!stop_requested())) return;
    log->info("stopping on a signal after phase {}", phase);
    throw Stopped("stopped on a signal after phase " + phase + "; " + out +
                  " holds the state: run the same command again to resume");
}

}  // namespace rq::phases
