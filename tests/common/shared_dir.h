#pragma once
#include <sys/stat.h>

#include <string>

#include <gtest/gtest.h>

// Where the bundled models and data live (../shared beside the checkout). Tests never skip:
// a missing folder is a failure that says what is missing.

namespace rq::test {

inline std::string shared_dir() {
    return RQ_SHARED_DIR;
}

inline std::string shared_path(const std::string& rel) {
    const std::string p = shared_dir() + "/" + rel;
    struct stat       st {};
    if (::stat(p.c_str(), &st) != 0)
        ADD_FAILURE() << "missing " << p << ": tests need ../shared beside the checkout "
                      << "(or -DRQ_SHARED_DIR=...)";
    return p;
}

}  // namespace rq::test
