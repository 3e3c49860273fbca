// Helpers for the error hierarchy (requant/io/error.h).
#include "requant/io/error.h"

#include <cerrno>
#include <cstring>

namespace rq {

std::string errno_string() {
    return std::strerror(errno);
}

}  // namespace rq
