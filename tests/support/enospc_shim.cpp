// A full disk on demand, for the full-disk tests (LD_PRELOAD). Writes to files under
// RQ_ENOSPC_DIR count against RQ_ENOSPC_AFTER bytes per process; the write that crosses the
// budget is cut short at it, and every later one fails with RQ_ENOSPC_ERRNO (ENOSPC by default,
// or EIO), as a file system that has filled up does. Only write, writev, pwrite and pwrite64
// called through the PLT are seen (HDF5's sec2 driver, libstdc++'s streams, our own writes);
// glibc's stdio calls its internal write and is not (logs). RQ_ENOSPC_COUNT=FILE instead
// appends the process's total bytes written there at exit, to size the budgets.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

struct Shim {
    std::string            dir;
    long long              budget = -1;  // < 0: no failure
    int                    err    = ENOSPC;
    const char*            count  = nullptr;
    std::atomic<long long> written{0};
    Shim() {
        if (const char* d = std::getenv("RQ_ENOSPC_DIR")) dir = d;
        if (const char* b = std::getenv("RQ_ENOSPC_AFTER")) budget = std::atoll(b);
        if (const char* e = std::getenv("RQ_ENOSPC_ERRNO"); e && std::strcmp(e, "EIO") == 0)
            err = EIO;
        count = std::getenv("RQ_ENOSPC_COUNT");
    }
    ~Shim() {
        if (count == nullptr) return;
        if (FILE* f = std::fopen(count, "a")) {
            std::fprintf(f, "%d %lld\n", int(::getpid()), written.load());
            std::fclose(f);
        }
    }
    // Whether `fd` is a file under `dir`.
    bool watched(int fd) const {
        if (dir.empty()) return false;
        char link[64], path[4096];
        std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        const ssize_t n = ::readlink(link, path, sizeof path - 1);
        if (n <= 0) return false;
        return std::string(path, std::size_t(n)).rfind(dir, 0) == 0;
    }
    // How many of `n` bytes may be written now; -1 (errno set) when none.
    ssize_t allow(int fd, std::size_t n) {
        if (!watched(fd)) return ssize_t(n);
        const long long before = written.fetch_add((long long)n);
        if (budget < 0) return ssize_t(n);
        const long long left = budget - before;
        if (left >= (long long)n) return ssize_t(n);
        written.fetch_sub((long long)n - std::max(0LL, left));
        if (left > 0) return ssize_t(left);
        errno = err;
        return -1;
    }
};

Shim& shim() {
    static Shim s;
    return s;
}

template <class F>
F next(const char* name) {
    return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

ssize_t write(int fd, const void* buf, size_t n) {
    static auto   real = next<ssize_t (*)(int, const void*, size_t)>("write");
    const ssize_t k    = shim().allow(fd, n);
    return k < 0 ? -1 : real(fd, buf, size_t(k));
}

ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
    static auto   real = next<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite");
    const ssize_t k    = shim().allow(fd, n);
    return k < 0 ? -1 : real(fd, buf, size_t(k), off);
}

ssize_t pwrite64(int fd, const void* buf, size_t n, off64_t off) {
    static auto   real = next<ssize_t (*)(int, const void*, size_t, off64_t)>("pwrite64");
    const ssize_t k    = shim().allow(fd, n);
    return k < 0 ? -1 : real(fd, buf, size_t(k), off);
}

ssize_t writev(int fd, const struct iovec* iov, int cnt) {
    static auto real = next<ssize_t (*)(int, const struct iovec*, int)>("writev");
    std::size_t n    = 0;
    for (int i = 0; i < cnt; ++i) n += iov[i].iov_len;
    const ssize_t k = shim().allow(fd, n);
    if (k < 0) return -1;
    if (std::size_t(k) == n) return real(fd, iov, cnt);
    // Cut short: the first k bytes only.
    static auto w    = next<ssize_t (*)(int, const void*, size_t)>("write");
    std::size_t left = std::size_t(k);
    ssize_t     done = 0;
    for (int i = 0; i < cnt && left > 0; ++i) {
        const std::size_t m   = std::min(left, iov[i].iov_len);
        const ssize_t     got = w(fd, iov[i].iov_base, m);
        if (got < 0) return done > 0 ? done : -1;
        done += got, left -= std::size_t(got);
        if (std::size_t(got) < m) break;
    }
    return done;
}
}
