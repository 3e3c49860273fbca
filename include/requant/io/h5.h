#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/error.h"

// HDF5 files over the C API, in the shape of HighFive: one class that owns the file, every C
// call checked once, failures as H5Error carrying the file, the object path and HDF5's own error
// stack. Datasets are whole tensors (contiguous, no chunking); attributes are scalars or strings.
// Paths are absolute inside the file (/layers/003/q_proj); missing groups are created on
// write. hdf5.h stays out of this header (pimpl).

namespace rq::io {

class H5Error : public IoError {  // an HDF5 call failed, or an object is missing or mistyped
  public:
    using IoError::IoError;
};

// Turns off libhdf5's free lists, so that every block it allocates is a fresh malloc and every
// one it frees goes back at once: leak checkers then see which call allocated a block
// (test_store under launch/test.sh --sanitize). Costs speed; not for production.
void h5_disable_free_lists();

class H5File {
  public:
    enum class Mode {
        Read,    // existing file, read only
        Append,  // existing file, read and write
        Create,  // new file, written under "<path>.tmp" and renamed to <path> by commit()
    };
    // Throws H5Error when the file cannot be opened or created.
    H5File(const std::string& path, Mode mode);
    ~H5File();  // closes; an uncommitted Create leaves nothing behind (the temporary is removed)
    H5File(H5File&&) noexcept;
    H5File& operator=(H5File&&) noexcept;
    H5File(const H5File&)            = delete;
    H5File& operator=(const H5File&) = delete;

    const std::string& path() const;

    // Writes `t` (float16/32/64, int32, int64, uint8 or bool stored as uint8; any shape, CPU)
    // as a new dataset with the SHA-256 of its bytes in its "sha256" attribute. Throws if the
    // path already exists. Objects carry no timestamps: equal content written in equal order
    // gives equal files.
    void write(const std::string& dataset, const at::Tensor& t);
    // In the stored dtype and shape; throws H5Error when the bytes do not match "sha256".
    at::Tensor               read(const std::string& dataset) const;
    std::vector<int64_t>     shape(const std::string& dataset) const;  // without reading it
    bool                     exists(const std::string& object) const;
    std::vector<std::string> children(const std::string& group) const;  // names, sorted

    // Scalar attributes on a group or dataset (created if absent, replaced if present).
    void        set_attr(const std::string& object, const std::string& name, double v);
    void        set_attr(const std::string& object, const std::string& name, int64_t v);
    void        set_attr(const std::string& object, const std::string& name, const std::string& v);
    double      attr_double(const std::string& object, const std::string& name) const;
    int64_t     attr_int(const std::string& object, const std::string& name) const;
    std::string attr_string(const std::string& object, const std::string& name) const;

    // A soft link to an object in another file (relative file names resolve against this
    // file's folder in h5py, h5dump and the C library alike).
    void link_external(const std::string& link, const std::string& file, const std::string& object);

    // Flushes and closes; for Create, fsyncs the temporary and renames it into place (atomic on
    // POSIX), then fsyncs the folder.
    void commit();

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace rq::io
