// The rank watchdog (requant/parallel/watchdog.h) on one process: it writes its heartbeat at
// once and keeps counting it up, leaves "done" behind when it ends, and never ends the job
// for a peer it has never seen (a run folder that is not shared) or one that finished. That it
// ends the job when a seen peer goes silent, naming it, is cli_limits (SIGSTOP of real ranks).
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "requant/parallel/watchdog.h"

namespace rq::parallel {
namespace {

namespace fs = std::filesystem;

std::string slurp(const std::string& p) {
    std::ifstream     f(p);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

long long beats(const std::string& p) {
    long long n = -1;
    std::istringstream(slurp(p)) >> n;
    return n;
}

struct Folder {
    std::string dir =
        (fs::temp_directory_path() / ("rq-watchdog-" + std::to_string(::getpid()))).string();
    Folder() { fs::create_directories(dir); }
    ~Folder() { fs::remove_all(dir); }
};

TEST(Watchdog, BeatsAndLeavesDone) {
    Folder            f;
    const std::string mine = Watchdog::heartbeat_path(f.dir, 1);
    {
        Watchdog w({f.dir, 1, 2, 5.0, 0.05});
        EXPECT_EQ(beats(mine), 1) << "the first beat is written before the constructor returns";
        std::this_thread::sleep_for(std::chrono::milliseconds(400));
        EXPECT_GE(beats(mine), 3) << slurp(mine);
        EXPECT_NE(slurp(mine).find(std::to_string(::getpid())), std::string::npos);
        std::ofstream(Watchdog::heartbeat_path(f.dir, 0)) << "done\n";  // rank 0 finished
    }
    EXPECT_EQ(slurp(mine), "done\n");
}

// Rank 0 with a peer whose heartbeat never shows (an unshared folder): well past the timeout
// the process is still alive (the test would die with it otherwise).
TEST(Watchdog, APeerNeverSeenIsNotWatched) {
    Folder f;
    {
        Watchdog w({f.dir, 0, 3, 1.0, 0.05});
        std::ofstream(Watchdog::heartbeat_path(f.dir, 2)) << "done\n";  // finished
        std::this_thread::sleep_for(std::chrono::milliseconds(1600));
    }
    SUCCEED() << "rank 1 never seen and rank 2 done: no abort";
}

}  // namespace
}  // namespace rq::parallel
