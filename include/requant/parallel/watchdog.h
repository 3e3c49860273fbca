#pragma once
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// Liveness of the ranks of a run (run.rank_timeout). A rank that stops answering (SIGSTOP, a
// hung node, a lost process) would leave its peers blocked in MPI for ever; the watchdog ends
// the job instead, naming the silent rank, so that the state written so far resumes.
//
// Every rank's watchdog thread rewrites its heartbeat file DIR/rank-NNN.alive ("<beat> <pid>
// <host>") every `beat_s` and watches the heartbeats of others: rank 0 watches every rank, the
// others watch rank 0. A heartbeat that has not changed for `timeout_s` (measured on the
// watcher's own clock, so clocks of different nodes need not agree) ends the job (MPI_Abort).
// The thread runs beside the computation, so a rank that is busy for hours in one step keeps
// beating: only a process that does not run at all trips it. DIR must be on the file system
// the ranks share (the run folder); a rank whose heartbeat never shows there is not watched
// (one warning).

namespace rq::parallel {

struct WatchdogOptions {
    std::string dir;            // where the heartbeat files live (OUT/logs)
    int         rank      = 0;  // world rank of this process
    int         ranks     = 1;  // world size
    double      timeout_s = 0;  // > 0
    double      beat_s    = 0;  // 0: timeout / 10, clamped to [0.2, 10] s
};

// What a watcher knows about one peer.
struct Heartbeat {
    std::string last;       // the file's last content seen ("" before the first)
    double      changed_s;  // when it last changed (watcher's clock, seconds since start)
    bool        seen   = false;
    bool        warned = false;
};

class Watchdog {
  public:
    // Writes the first heartbeat before returning; the thread starts at once.
    explicit Watchdog(WatchdogOptions o);
    ~Watchdog();  // stops the thread and removes this rank's heartbeat file
    Watchdog(const Watchdog&)            = delete;
    Watchdog& operator=(const Watchdog&) = delete;

    // The file of `rank` under `dir`.
    static std::string heartbeat_path(const std::string& dir, int rank);

  private:
    void loop();
    void beat();
    void watch(double now_s);

    WatchdogOptions          o_;
    std::vector<int>         watched_;
    std::map<int, Heartbeat> peers_;
    long long                beats_ = 0;
    std::mutex               m_;
    std::condition_variable  cv_;
    bool                     stop_ = false;
    std::thread              thread_;
};

}  // namespace rq::parallel
