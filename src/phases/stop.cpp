// Stop on SIGUSR1/SIGTERM (requant/phases/stop.h).
#include "requant/phases/stop.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

namespace rq::phases {
namespace {

std::atomic<int> g_signal{0};
int              g_pipe[2] = {-1, -1};  // the handler wakes the watcher through it

// Whichever thread the signal lands on (libraries start threads before main), only this runs:
// async-signal-safe, it records the signal and wakes the watcher.
void on_signal(int sig) {
    int expected = 0;
    if (g_signal.compare_exchange_strong(expected, sig)) {
        const char                     b = 1;
        [[maybe_unused]] const ssize_t n = write(g_pipe[1], &b, 1);
    }
}

// Tells what happened, then gives the run `grace_s` to reach a phase boundary.
void watch(double grace_s) {
    pollfd p{g_pipe[0], POLLIN, 0};
    while (poll(&p, 1, -1) < 0) {
    }
    const int sig = g_signal.load();
    std::fprintf(stderr,
                 "requant-dist: %s received: stopping at the next phase boundary (at most %.0f "
                 "s); the state is kept for a resume\n",
                 sig == SIGUSR1 ? "SIGUSR1" : "SIGTERM", grace_s);
    std::fflush(stderr);
    p.revents = 0;
    char                           b;
    [[maybe_unused]] const ssize_t n = read(g_pipe[0], &b, 1);
    poll(&p, 1, int(grace_s * 1000));  // nothing writes again: a plain timed wait
    std::fprintf(stderr,
                 "requant-dist: no phase boundary within %.0f s of the signal: exiting now; the "
                 "next run resumes from the last finished layer or round\n",
                 grace_s);
    std::fflush(stderr);
    _exit(kStoppedExit);
}

// RQ_STOP_FILE: a stop asked for by creating a file (the Slurm scripts do this, so no signal
// can reach a rank before its handler is in place).
void poll_stop_file(std::string path) {
    while (g_signal.load() == 0) {
        if (access(path.c_str(), F_OK) == 0) {
            on_signal(SIGUSR1);
            return;
        }
        std::this_thread::sleep_for(std::chrono::seconds(1));
    }
}

}  // namespace

void install_stop_signals(double grace_s) {
    if (g_pipe[0] < 0) {
        if (pipe(g_pipe) != 0) return;
        std::thread(watch, grace_s).detach();
        if (const char* f = std::getenv("RQ_STOP_FILE"); f && *f)
            std::thread(poll_stop_file, std::string(f)).detach();
    }
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

bool stop_requested() {
    return g_signal.load() != 0;
}
}  // namespace rq::phases
