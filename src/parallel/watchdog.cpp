// Liveness of the ranks of a run (requant/parallel/watchdog.h).
#include "requant/parallel/watchdog.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "requant/parallel/mpi_env.h"
#include "requant/units.h"

namespace rq::parallel {
namespace {

constexpr const char* kDone = "done";  // a heartbeat file's content once its rank has finished

std::string read_all(const std::string& path) {
    std::ifstream f(path);
    if (!f) return "";
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

// Replaces the file's content (a few bytes; a reader sees the old or the new line).
void write_line(const std::string& path, const std::string& line) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::trunc);
        f << line << "\n";
        if (!f) return;  // a heartbeat that cannot be written shows as silence to the watcher
    }
    std::error_code ec;  // never throws: this runs on the watchdog thread
    std::filesystem::rename(tmp, path, ec);
}

}  // namespace

std::string Watchdog::heartbeat_path(const std::string& dir, int rank) {
    char name[32];
    std::snprintf(name, sizeof name, "rank-%03d.alive", rank);
    return dir + "/" + name;
}

Watchdog::Watchdog(WatchdogOptions o) : o_(std::move(o)) {
    if (o_.beat_s <= 0) o_.beat_s = std::clamp(o_.timeout_s / 10, 0.2, 10.0);
    if (o_.rank == 0)
        for (int r = 1; r < o_.ranks; ++r) watched_.push_back(r);
    else
        watched_.push_back(0);
    for (int r : watched_) peers_[r] = {"", 0.0};
    beat();
    thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
    {
        std::lock_guard<std::mutex> lock(m_);
        stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    // Finished, not silent: the watchers stop watching this rank.
    write_line(heartbeat_path(o_.dir, o_.rank), kDone);
}

void Watchdog::beat() {
    write_line(heartbeat_path(o_.dir, o_.rank),
               std::to_string(++beats_) + " " + std::to_string(::getpid()) + " " + host_name());
}

void Watchdog::loop() {
    const auto                   t0 = Clock::now();
    std::unique_lock<std::mutex> lock(m_);
    while (
        !cv_.wait_for(lock, std::chrono::duration<double>(o_.beat_s), [this] { return stop_; })) {
        beat();
        watch(since(t0));
    }
}

void Watchdog::watch(double now_s) {
    for (int r : watched_) {
        Heartbeat&        h    = peers_[r];
        const std::string text = read_all(heartbeat_path(o_.dir, r));
        if (text.rfind(kDone, 0) == 0) continue;  // finished its part of the run
        if (!text.empty() && text != h.last) {
            h.last = text, h.changed_s = now_s, h.seen = true;
            continue;
        }
        if (now_s - h.changed_s <= o_.timeout_s) continue;
        if (!h.seen) {  // never visible: the folder is not shared, so nothing is known
            if (!h.warned)
                spdlog::warn(
                    "rank {}'s heartbeat {} is not visible from here (is the run folder "
                    "on a file system every rank shares?); its liveness is not watched",
                    r, heartbeat_path(o_.dir, r));
            h.warned = true;
            continue;
        }
        std::istringstream in(h.last);
        long long          n = 0, pid = 0;
        std::string        host;
        in >> n >> pid >> host;
        std::fprintf(stderr,
                     "[rank %d] requant-dist: error: rank %d (pid %lld on %s) has not answered "
                     "for %.0f s (run.rank_timeout = %g s): stopped, hung or lost; ending the "
                     "job. The state written so far resumes with the same command.\n",
                     o_.rank, r, pid, host.c_str(), now_s - h.changed_s, o_.timeout_s);
        std::fflush(stderr);
        abort_job(1);
    }
}

}  // namespace rq::parallel
