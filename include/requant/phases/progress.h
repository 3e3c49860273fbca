#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

// Progress with ETA on stderr: a bar redrawn in place on a terminal, plain lines (every 10% or
// 10 s) otherwise, so logs from batch jobs stay readable.

namespace rq::phases {

class Progress {
  public:
    Progress(std::string label, int64_t total, std::string unit);
    void update(int64_t done);  // done in [0, total]
    // n more steps were done by an earlier run (resume): they count as done but not in the
    // rate, so the ETA stays right.
    void   skip(int64_t n) { skipped_ += n; }
    void   finish();  // final line with the elapsed time
    double elapsed_s() const;

  private:
    std::string                           label_, unit_;
    int64_t                               total_, done_ = 0, skipped_ = 0;
    bool                                  tty_;
    bool                                  finished_ = false;
    std::chrono::steady_clock::time_point start_, last_print_;
    int64_t                               last_decile_ = -1;
};

std::string format_duration(double seconds);  // "42 s", "3 min 05 s", "2 h 10 min"

// A callback for loops that report (done, total), done = 0 before the first step (PQI nodes,
// Taylor passes): a Progress bar when `show` (rank 0), created at done = 0 and finished at
// done = total; nothing otherwise.
std::function<void(int, int)> step_progress(bool show, std::string label, std::string unit);

}  // namespace rq::phases
