// safetensors reader and writer (requant/io/safetensors.h).
#include "requant/io/safetensors.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "requant/error.h"
#include "requant/io/atomic_file.h"

namespace rq::io {
namespace {

struct DTypeRow {
    DType          dt;
    const char*    name;
    std::size_t    size;
    at::ScalarType st;
};
constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8, at::kDouble}, {DType::F32, "F32", 4, at::kFloat},
    {DType::F16, "F16", 2, at::kHalf},   {DType::BF16, "BF16", 2, at::kBFloat16},
    {DType::I64, "I64", 8, at::kLong},   {DType::I32, "I32", 4, at::kInt},
    {DType::I16, "I16", 2, at::kShort},  {DType::I8, "I8", 1, at::kChar},
    {DType::U8, "U8", 1, at::kByte},     {DType::Bool, "BOOL", 1, at::kBool},
};

const DTypeRow& row(DType dt) {
    for (const auto& r : kDTypes)
        if (r.dt == dt) return r;
    throw InternalError("unknown DType");
}

std::uint64_t read_le64(const std::uint8_t* p) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

}  // namespace

const char* dtype_name(DType dt) {
    return row(dt).name;
}
std::size_t dtype_size(DType dt) {
    return row(dt).size;
}
at::ScalarType dtype_scalar_type(DType dt) {
    return row(dt).st;
}

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
    const std::string where = base_name(path) + ": ";
    const std::size_t size  = file_.size();
    if (size < 8)
        throw FormatError(where + "file is truncated (" + std::to_string(size) +
                          " bytes; a safetensors file starts with an 8-byte header length)");
    const std::uint64_t n_header = read_le64(file_.data());
    if (n_header > size - 8)
        throw FormatError(where + "header length " + std::to_string(n_header) +
                          " runs beyond the end of the file (" + std::to_string(size) +
                          " bytes; is the file truncated or not safetensors?)");
    data_offset_               = 8 + n_header;
    const std::uint64_t n_data = size - data_offset_;
    const char*         hdr    = reinterpret_cast<const char*>(file_.data() + 8);

    nlohmann::json j;
    try {
        j = nlohmann::json::parse(hdr, hdr + n_header);
    } catch (const nlohmann::json::exception& e) {
        throw FormatError(where + "header is not valid JSON: " + e.what());
    }
    if (!j.is_object()) throw FormatError(where + "header is not a JSON object");

    for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& name = it.key();
        if (name == "__metadata__") {
            if (!it->is_object()) throw FormatError(where + "__metadata__ is not an object");
            for (auto m = it->begin(); m != it->end(); ++m)
                if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
            continue;
        }
        const std::string at_t = where + "tensor '" + name + "' ";
        const auto&       e    = *it;
        if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
            !e.contains("data_offsets"))
            throw FormatError(at_t + "needs dtype, shape and data_offsets");
        TensorInfo info;
        info.name = name;
        if (!e["dtype"].is_string()) throw FormatError(at_t + "has a non-string dtype");
        const std::string dts   = e["dtype"].get<std::string>();
        bool              found = false;
        for (const auto& r : kDTypes)
            if (dts == r.name) info.dtype = r.dt, found = true;
        if (!found) throw FormatError(at_t + "has unsupported dtype '" + dts + "'");
        if (!e["shape"].is_array()) throw FormatError(at_t + "has a shape that is not an array");
        std::uint64_t numel = 1;
        for (const auto& d : e["shape"]) {
            if (!d.is_number_integer() || d.get<int64_t>() < 0)
                throw FormatError(at_t + "has an invalid shape " + e["shape"].dump());
            info.shape.push_back(d.get<int64_t>());
            const auto dim = static_cast<std::uint64_t>(info.shape.back());
            if (dim != 0 && numel > UINT64_MAX / 8 / dim)
                throw FormatError(at_t + "has a shape too large to address " + e["shape"].dump());
            numel *= dim;
        }
        const auto& off = e["data_offsets"];
        if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
            !off[1].is_number_unsigned())
            throw FormatError(at_t + "has invalid data_offsets " + off.dump());
        info.begin = off[0].get<std::uint64_t>();
        info.end   = off[1].get<std::uint64_t>();
        if (info.begin > info.end)
            throw FormatError(at_t + "has data_offsets " + off.dump() + " with begin > end");
        if (info.end > n_data)
            throw FormatError(at_t + "data_offsets " + off.dump() + " run beyond the data (" +
                              std::to_string(n_data) + " bytes; is the file truncated?)");
        const std::uint64_t want = numel * dtype_size(info.dtype);
        if (info.end - info.begin != want)
            throw FormatError(at_t + "holds " + std::to_string(info.end - info.begin) +
                              " bytes but " + dts + " " + shape_string(info.shape) + " needs " +
                              std::to_string(want));
        tensors_.push_back(std::move(info));
    }
    std::sort(tensors_.begin(), tensors_.end(),
              [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
    const TensorInfo* prev = nullptr;
    for (const auto& t : tensors_) {
        if (t.begin == t.end) continue;
        if (prev != nullptr && t.begin < prev->end)
            throw FormatError(where + "tensors '" + prev->name + "' and '" + t.name +
                              "' overlap in the data section");
        prev = &t;
    }
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
}

at::Tensor SafetensorsFile::load(const std::string& name) const {
    const TensorInfo* t = find(name);
    if (t == nullptr) throw FormatError(base_name(path()) + ": tensor '" + name + "' is missing");
    return load(name, dtype_scalar_type(t->dtype));
}

namespace {

// Non-zero when any element of p[0, n) has all exponent bits set (NaN or infinity).
template <typename Bits>
Bits exponent_all_ones(const Bits* p, std::size_t n, Bits exp_mask) {
    Bits any = 0;
    for (std::size_t i = 0; i < n; ++i) any |= static_cast<Bits>((p[i] & exp_mask) == exp_mask);
    return any;
}

template <typename Bits>
int64_t first_with_exponent(const void* data, std::size_t n, Bits exp_mask) {
    constexpr std::size_t kBlock = 4096;  // elements tested before looking for the first
    const auto*           p      = static_cast<const Bits*>(data);
    for (std::size_t b = 0; b < n; b += kBlock) {
        const std::size_t m = std::min(kBlock, n - b);
        if (!exponent_all_ones(p + b, m, exp_mask)) continue;
        for (std::size_t i = b; i < b + m; ++i)
            if ((p[i] & exp_mask) == exp_mask) return static_cast<int64_t>(i);
    }
    return -1;
}

}  // namespace

int64_t first_non_finite(const void* data, std::size_t n, DType dt) {
    switch (dt) {
        case DType::F64:
            return first_with_exponent<std::uint64_t>(data, n, 0x7FF0000000000000ull);
        case DType::F32:
            return first_with_exponent<std::uint32_t>(data, n, 0x7F800000u);
        case DType::F16:
            return first_with_exponent<std::uint16_t>(data, n, 0x7C00u);
        case DType::BF16:
            return first_with_exponent<std::uint16_t>(data, n, 0x7F80u);
        default:
            return -1;
    }
}

int64_t first_non_finite_ref(const at::Tensor& t) {
    if (!t.is_floating_point()) return -1;
    const at::Tensor bad = at::logical_not(at::isfinite(t)).flatten().nonzero();
    return bad.numel() == 0 ? -1 : bad[0][0].item<int64_t>();
}

at::Tensor SafetensorsFile::load(const std::string& name, at::ScalarType dtype,
                                 Finite finite) const {
    const TensorInfo* t = find(name);
    if (t == nullptr) throw FormatError(base_name(path()) + ": tensor '" + name + "' is missing");
    // Copy the bytes out of the mapping first: offsets need not be aligned to the element size,
    // and the result must outlive the map. With Finite::require each block is scanned right
    // after it is copied, while it is still in cache.
    const auto            st     = dtype_scalar_type(t->dtype);
    at::Tensor            raw    = at::empty(t->shape, at::TensorOptions().dtype(st));
    const std::size_t     size   = dtype_size(t->dtype);
    constexpr std::size_t kBlock = std::size_t{1} << 20;  // bytes, a multiple of every size
    auto* const           dst    = static_cast<std::uint8_t*>(raw.data_ptr());
    const auto* const     src    = file_.data() + data_offset_ + t->begin;
    for (std::uint64_t at = 0; at < t->end - t->begin; at += kBlock) {
        const std::size_t n =
            static_cast<std::size_t>(std::min<std::uint64_t>(kBlock, t->end - t->begin - at));
        std::memcpy(dst + at, src + at, n);
        if (finite == Finite::require) {
            const int64_t bad = first_non_finite(dst + at, n / size, t->dtype);
            if (bad >= 0) {
                const int64_t i = static_cast<int64_t>(at / size) + bad;
                const double  v = raw.flatten()[i].item<double>();
                throw FormatError(path() + ": tensor '" + name + "' holds " +
                                  (std::isnan(v) ? "NaN"
                                   : v > 0       ? "+Inf"
                                                 : "-Inf") +
                                  " at element " + std::to_string(i) + " of " +
                                  shape_string(t->shape) + " (" + dtype_name(t->dtype) +
                                  "); a model with non-finite weights is refused");
            }
        }
    }
    if (t->end > t->begin) file_.release(data_offset_ + t->begin, t->end - t->begin);
    return st == dtype ? raw : raw.to(dtype);
}

at::Tensor SafetensorsFile::view(const std::string& name) const {
    const TensorInfo* t = find(name);
    if (t == nullptr) throw FormatError(base_name(path()) + ": tensor '" + name + "' is missing");
    const std::uint8_t* p = file_.data() + data_offset_ + t->begin;
    if (t->end == t->begin || reinterpret_cast<std::uintptr_t>(p) % dtype_size(t->dtype) != 0)
        return load(name);
    return at::from_blob(const_cast<std::uint8_t*>(p), t->shape,
                         at::TensorOptions().dtype(dtype_scalar_type(t->dtype)));
}

void write_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    nlohmann::json hdr = nlohmann::json::object();
    if (!metadata.empty()) hdr["__metadata__"] = metadata;
    std::vector<at::Tensor> blobs;
    std::uint64_t           off = 0;
    for (const auto& [name, tensor] : tensors) {
        at::Tensor  c   = tensor.contiguous().cpu();
        const char* dtn = nullptr;
        for (const auto& r : kDTypes)
            if (r.st == c.scalar_type()) dtn = r.name;
        if (dtn == nullptr)
            throw FormatError(base_name(path) + ": tensor '" + name + "' has an unsupported dtype");
        const std::uint64_t n = c.numel() * c.element_size();
        hdr[name] = {{"dtype", dtn}, {"shape", c.sizes().vec()}, {"data_offsets", {off, off + n}}};
        off += n;
        blobs.push_back(c);
    }
    std::string h = hdr.dump();
    h.append((8 - h.size() % 8) % 8, ' ');
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw IoError(tmp + ": cannot create: " + errno_string());
        std::uint8_t  len[8];
        std::uint64_t n = h.size();
        for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>(n >> (8 * i));
        out.write(reinterpret_cast<const char*>(len), 8);
        out.write(h.data(), static_cast<std::streamsize>(h.size()));
        for (const auto& b : blobs)
            out.write(static_cast<const char*>(b.data_ptr()),
                      static_cast<std::streamsize>(b.numel() * b.element_size()));
        out.flush();
        out.close();
        if (!out) {
            const std::string why = errno_string();
            std::remove(tmp.c_str());
            throw IoError(path + ": cannot write: " + why);
        }
    }
    try {
        fsync_file(tmp);
    } catch (const IoError&) {
        std::remove(tmp.c_str());
        throw;
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const std::string why = errno_string();
        std::remove(tmp.c_str());
        throw IoError(path + ": cannot rename into place: " + why);
    }
}

}  // namespace rq::io
