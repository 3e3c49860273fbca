#pragma once
#include <string>

// One run per run directory: rank 0 holds an exclusive lock on OUT/run.lock (flock) from the
// moment it opens the directory until the process ends, however it ends (the kernel drops the
// lock of a killed process, so a requeued or resumed run is never blocked by a dead one). A
// second `requant-dist run` on the same folder, e.g. a resubmission while the first is still
// running, is refused before it reads or writes anything there, instead of two runs writing
// one state. The file names the holder (host, pid, start time) for the message.

namespace rq::store {

class RunLock {
  public:
    // Throws StateError when another process holds OUT's lock (naming it), IoError when the
    // lock file cannot be opened.
    explicit RunLock(const std::string& out);
    ~RunLock();
    RunLock(const RunLock&)            = delete;
    RunLock& operator=(const RunLock&) = delete;

  private:
    int fd_ = -1;
};

}  // namespace rq::store
