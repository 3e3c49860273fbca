#pragma once
#include <stdexcept>
#include <string>

// The one error hierarchy of requant-dist. Library code throws a subclass, never Error itself;
// only cli catches and exits. Messages name the file and, where there is one, the tensor;
// callers add context on the way up (rank, layer, linear, file) with add_context and rethrow
// the same object, so the type survives:
//     try { ... } catch (Error& e) { e.add_context("layer 3 q_proj"); throw; }
// This header needs nothing but the standard library: quant/ and model/ throw without linking
// MPI, HDF5 or OpenSSL.

namespace rq {

class Error : public std::runtime_error {
  public:
    const char* what() const noexcept override { return msg_.c_str(); }
    // "<context>: <message>"; returns *this for `throw;` after it.
    Error& add_context(const std::string& context);

  protected:
    explicit Error(const std::string& what) : std::runtime_error(what), msg_(what) {}

  private:
    std::string msg_;
};

#define RQ_ERROR_CLASS(Name, Base)                             \
    class Name : public Base {                                 \
      public:                                                  \
        explicit Name(const std::string& what) : Base(what) {} \
    }

RQ_ERROR_CLASS(IoError, Error);       // a file cannot be opened, read, mapped or written
RQ_ERROR_CLASS(FormatError, Error);   // a file's bytes do not follow its format
RQ_ERROR_CLASS(ShapeError, Error);    // a tensor's shape or dtype disagrees with the config
RQ_ERROR_CLASS(ConfigError, Error);   // a config, job or option value is invalid or unsupported
RQ_ERROR_CLASS(StateError, Error);    // a run directory's state is refused (foreign, damaged, old)
RQ_ERROR_CLASS(NumericError, Error);  // values a computation cannot take (not finite, not PD)
RQ_ERROR_CLASS(UnsupportedError, Error);  // an operation this backend or build does not have
RQ_ERROR_CLASS(ResourceError, Error);     // the machine lacks what the job needs (memory)
RQ_ERROR_CLASS(InternalError, Error);     // a broken invariant: a bug in requant-dist
RQ_ERROR_CLASS(InjectedFailure, Error);   // a failure injected by a test (RQ_FAIL_RANK)
RQ_ERROR_CLASS(MpiError, Error);   // an MPI call failed (message has file:line and MPI's text)
RQ_ERROR_CLASS(NcclError, Error);  // an NCCL or CUDA runtime call failed

#undef RQ_ERROR_CLASS

// "<errno text>" for the current errno, for IoError messages.
std::string errno_string();

}  // namespace rq
