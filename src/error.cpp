// The error hierarchy (requant/error.h).
#include "requant/error.h"

#include <cerrno>
#include <cstring>

namespace rq {

Error& Error::add_context(const std::string& context) {
    msg_ = context + ": " + msg_;
    return *this;
}

std::string errno_string() {
    return std::strerror(errno);
}

}  // namespace rq
