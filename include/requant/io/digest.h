#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

// SHA-256 digests (OpenSSL) for state integrity and run fingerprints: every HDF5 dataset we
// write carries the digest of its bytes, and a run directory carries the digest of what it was
// made from (model, data, job).

namespace rq::io {

class Sha256 {
  public:
    Sha256();
    ~Sha256();
    Sha256(const Sha256&)            = delete;
    Sha256& operator=(const Sha256&) = delete;

    Sha256&     add(const void* data, std::size_t n);
    Sha256&     add(const std::string& s);          // the bytes, then a separator (no ambiguity)
    Sha256&     add_tensor(const at::Tensor& t);    // dtype, shape and the contiguous bytes
    Sha256&     add_file(const std::string& path);  // the file's bytes; throws IoError
    std::string hex();                              // finishes; the object cannot be reused

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

std::string sha256_hex(const void* data, std::size_t n);

}  // namespace rq::io
