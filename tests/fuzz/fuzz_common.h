#pragma once
// Shared by the libFuzzer targets (tests/fuzz/, launch/fuzz.sh). A target passes the input to
// one parser of outside bytes; the parser may refuse it only with rq::Error (the one error
// hierarchy: a clear message). Anything else — another exception, a crash, a sanitizer report,
// a leak — is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>

#include "requant/error.h"

namespace rq::fuzz {

// A folder of this process's own under /dev/shm (or /tmp), made once and removed at exit.
inline const std::string& scratch() {
    static const std::string* dir = [] {  // never destroyed: the exit handler reads it
        const std::string base = std::filesystem::exists("/dev/shm")  // memory, not disk
                                     ? std::string("/dev/shm")
                                     : std::filesystem::temp_directory_path().string();
        auto*             d    = new std::string(base + "/rq-fuzz-" + std::to_string(::getpid()));
        std::filesystem::create_directories(*d);
        std::atexit([] {
            std::error_code ec;
            std::filesystem::remove_all(scratch(), ec);
        });
        return d;
    }();
    return *dir;
}

inline void put(const std::string& path, const uint8_t* data, size_t size) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), std::streamsize(size));
}

// Runs fn; rq::Error is a refusal, anything else aborts with what it was.
template <class F>
int refuse_only_with_errors(F&& fn) {
    try {
        fn();
    } catch (const rq::Error&) {
    } catch (const std::exception& e) {
        std::fprintf(stderr, "not an rq::Error: %s\n", e.what());
        std::abort();
    } catch (...) {
        std::fprintf(stderr, "a non-standard exception\n");
        std::abort();
    }
    return 0;
}

}  // namespace rq::fuzz
