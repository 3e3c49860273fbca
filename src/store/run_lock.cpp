// The run directory's lock (requant/store/run_lock.h).
#include "requant/store/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <string>

#include "requant/error.h"

namespace rq::store {
namespace {

std::string read_holder(int fd) {  // what the holder wrote, on one line
    char        buf[256] = {};
    ssize_t     n        = pread(fd, buf, sizeof buf - 1, 0);
    std::string s(buf, n > 0 ? std::size_t(n) : 0);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
    return s.empty() ? "unknown" : s;
}

std::string holder_line() {  // "host HOST pid PID since YYYY-MM-DD HH:MM:SS UTC"
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    const std::time_t now = std::time(nullptr);
    std::tm           tm{};
    gmtime_r(&now, &tm);
    char when[32];
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
    return "host " + std::string(host) + " pid " + std::to_string(getpid()) + " since " + when +
           "\n";
}

std::string run_lock_path(const std::string& out) {  // OUT/run.lock
    return out + "/run.lock";
}

}  // namespace

RunLock::RunLock(const std::string& out) {
    const std::string path = run_lock_path(out);
    fd_                    = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw IoError(path + ": cannot open the run lock: " + errno_string());
    if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        const int         err = errno;
        const std::string who = read_holder(fd_);
        close(fd_);
        fd_ = -1;
        if (err == EWOULDBLOCK)
            throw StateError(out + " is in use by another requant-dist run (" + who +
                             "); wait for it to end, or use another --out");
        errno = err;
        throw IoError(path + ": cannot lock: " + errno_string());
    }
    const std::string line = holder_line();
    if (ftruncate(fd_, 0) != 0 || pwrite(fd_, line.data(), line.size(), 0) < 0) {
        const std::string why = errno_string();
        close(fd_);
        throw IoError(path + ": cannot write the run lock: " + why);
    }
}

RunLock::~RunLock() {
    if (fd_ >= 0) close(fd_);  // releases the lock; the file stays (its holder line is stale)
}

}  // namespace rq::store
