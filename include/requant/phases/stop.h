#pragma once
#include "requant/error.h"

// Stopping on a signal without losing work: Slurm's warning before a time limit
// (--signal=USR1@T), scancel and requeue send SIGUSR1 or SIGTERM. install_stop_signals() sets a
// handler for both (call it before MPI_Init, and again after: the warning can come at once, and
// MPI may set its own). On a signal the run stops at the next phase boundary, where every rank
// agrees (Stopped, exit code kStoppedExit); if no boundary comes within `grace_s` seconds, the
// process exits with the same code at once. With RQ_STOP_FILE set, the file appearing (polled
// every second) counts as the signal: the Slurm scripts ask for a stop that way, which cannot
// kill a rank that has not yet installed its handler. Either way nothing written is lost: every
// state file is replaced atomically, so the next run resumes from the last finished layer or round.

namespace rq::phases {

constexpr int kStoppedExit = 3;  // "stopped on a signal; the state is saved; rerun to resume"

class Stopped : public Error {
  public:
    explicit Stopped(const std::string& what) : Error(what) {}
};

void install_stop_signals(double grace_s);
bool stop_requested();

}  // namespace rq::phases
