// Whole-or-nothing file writes (requant/io/atomic_file.h).
#include "requant/io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "requant/error.h"

namespace rq::io {
namespace {

// Closes the descriptor and removes the temporary unless released.
struct TempFile {
    std::string path;
    int         fd   = -1;
    bool        keep = false;
    ~TempFile() {
        if (fd >= 0) ::close(fd);
        if (!keep) std::remove(path.c_str());
    }
};

[[noreturn]] void fail(const std::string& path, const char* what, int err) {
    errno = err;
    throw IoError(path + ": " + what + ": " + errno_string());
}

}  // namespace

void fsync_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(path, "cannot open to sync", errno);
    const int rc = ::fsync(fd), err = errno;
    ::close(fd);
    if (rc != 0) fail(path, "cannot sync to disk", err);
}

void fsync_dir(const std::string& dir) noexcept {
    const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
    TempFile t{path + ".tmp." + std::to_string(::getpid())};
    t.fd = ::open(t.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (t.fd < 0) fail(path, "cannot create", errno);
    for (std::size_t done = 0; done < bytes.size();) {
        const ssize_t n = ::write(t.fd, bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail(path, "cannot write", n < 0 ? errno : EIO);
        done += std::size_t(n);
    }
    if (::fsync(t.fd) != 0) fail(path, "cannot sync to disk", errno);
    const int rc = ::close(t.fd);
    t.fd         = -1;
    if (rc != 0) fail(path, "cannot close", errno);
    if (::rename(t.path.c_str(), path.c_str()) != 0) fail(path, "cannot rename into place", errno);
    t.keep         = true;
    const auto cut = path.find_last_of('/');
    fsync_dir(cut == std::string::npos ? "." : cut == 0 ? "/" : path.substr(0, cut));
}

}  // namespace rq::io
