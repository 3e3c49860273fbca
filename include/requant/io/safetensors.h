#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/io/mmap_file.h"

// safetensors files: memory-mapped, header validated in full on open, tensors materialised one
// at a time on request. Format: 8-byte little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {...}}, then the data.
// This is not a writer for models; write_safetensors exists for tests, fixtures and export.

namespace rq::io {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, Bool };

struct TensorInfo {
    std::string          name;
    DType                dtype = DType::F32;
    std::vector<int64_t> shape;      // PyTorch order, outermost first
    std::uint64_t        begin = 0;  // byte offsets into the data section, [begin, end)
    std::uint64_t        end   = 0;
};

const char*    dtype_name(DType dt);                             // "BF16", ...
std::size_t    dtype_size(DType dt);                             // bytes per element
at::ScalarType dtype_scalar_type(DType dt);                      // at::kBFloat16, ...
std::string    shape_string(const std::vector<int64_t>& shape);  // "[256, 4096]"

// The index of the first NaN or infinity among n stored elements of a floating dtype (-1 if
// none; integer dtypes: -1). Tests the exponent bits, in blocks, so the scan runs over bytes
// just copied and still in cache. first_non_finite_ref: the same through at::isfinite.
int64_t first_non_finite(const void* data, std::size_t n, DType dt);
int64_t first_non_finite_ref(const at::Tensor& t);

// Whether load() refuses a tensor holding a NaN or infinity (FormatError naming file, tensor,
// the value's kind and its flat index).
enum class Finite { any, require };

class SafetensorsFile {
  public:
    // Maps the file and validates the header: throws IoError (open/map) or FormatError naming
    // the file (and tensor) for truncation, a header length beyond the file, bad JSON, unknown
    // dtypes, negative shapes, offsets out of range, overlapping, or disagreeing with the shape.
    explicit SafetensorsFile(const std::string& path);

    const std::string&                        path() const { return file_.path(); }
    const std::vector<TensorInfo>&            tensors() const { return tensors_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const TensorInfo*                         find(const std::string& name) const;

    // A fresh, owning CPU tensor with the stored values converted to `dtype`. Throws
    // FormatError if the tensor is missing, or with Finite::require if it holds a non-finite
    // value (scanned block by block as it is copied out of the mapping: no extra pass).
    at::Tensor load(const std::string& name, at::ScalarType dtype,
                    Finite finite = Finite::any) const;
    // As load(), keeping the stored dtype.
    at::Tensor load(const std::string& name) const;
    // The stored tensor without a copy: a view of the mapping (read-only memory: writing to it
    // faults), valid while this file lives. A copy when its offset is not a multiple of its
    // element size (safetensors does not promise alignment). Throws FormatError if missing.
    at::Tensor view(const std::string& name) const;

  private:
    MappedFile                         file_;
    std::uint64_t                      data_offset_ = 0;  // 8 + header length
    std::vector<TensorInfo>            tensors_;          // in file order
    std::map<std::string, std::size_t> index_;
    std::map<std::string, std::string> metadata_;
};

// Writes tensors (contiguous CPU, any supported dtype) as one safetensors file, atomically
// (temporary name, then rename). Names are written in map order.
void write_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace rq::io
