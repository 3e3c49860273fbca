#pragma once
#include <stdexcept>
#include <string>

// The one error hierarchy of requant-dist. Library code throws; only cli catches and exits.
// Messages name the file and, where there is one, the tensor; context is added on rethrow.

namespace rq {

class Error : public std::runtime_error {
  public:
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};
class IoError : public Error {  // a file cannot be opened, read, mapped or written
  public:
    using Error::Error;
};
class FormatError : public Error {  // a file's bytes do not follow its format
  public:
    using Error::Error;
};
class ShapeError : public Error {  // a tensor's shape or dtype disagrees with the config
  public:
    using Error::Error;
};
class ConfigError : public Error {  // a config, job or option value is invalid or unsupported
  public:
    using Error::Error;
};

class MpiError : public Error {  // an MPI call failed (message has file:line and MPI's text)
  public:
    using Error::Error;
};
class NcclError : public Error {  // an NCCL or CUDA runtime call failed
  public:
    using Error::Error;
};

// "<errno text>" for the current errno, for IoError messages.
std::string errno_string();

}  // namespace rq
