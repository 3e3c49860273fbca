#pragma once
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "requant/io/hf_config.h"
#include "requant/io/safetensors.h"

// A Hugging Face model folder: config.json plus model.safetensors, or shards listed in
// model.safetensors.index.json. Shards are mapped when first needed; a tensor is materialised
// (and converted) only when asked for, so a rank that loads a slice of layers touches only
// those bytes.

namespace rq::io {

class HfCheckpoint {
  public:
    // Reads config.json and the index (if any). Throws IoError / FormatError / ConfigError.
    explicit HfCheckpoint(std::string dir);

    const std::string&       dir() const { return dir_; }
    const LlamaConfig&       config() const { return config_; }
    bool                     contains(const std::string& name) const;
    std::vector<std::string> tensor_names() const;  // every tensor of every shard

    // The tensor `name`, checked against `shape`, converted to `dtype`. Throws FormatError if it
    // is missing or holds a NaN or infinity, ShapeError if its shape differs, naming the shard
    // file and the tensor.
    at::Tensor load(const std::string& name, const std::vector<int64_t>& shape,
                    at::ScalarType dtype) const;

    // As load(), in the stored dtype, without a copy: a read-only view of the mapped shard
    // (SafetensorsFile::view), valid while this checkpoint lives. Its pages count as resident
    // once touched, and the kernel may drop and re-read them under memory pressure.
    at::Tensor view(const std::string& name, const std::vector<int64_t>& shape) const;

    // The tensor `name` as stored (dtype and shape). Throws FormatError if it is missing.
    at::Tensor load_stored(const std::string& name) const;

    // Names loaded so far, and those never loaded (llama.cpp's done_getting_tensors check).
    const std::set<std::string>& used() const { return used_; }
    std::vector<std::string>     unused() const;
    std::uint64_t                bytes_loaded() const { return bytes_loaded_; }  // as stored

  private:
    const SafetensorsFile& shard(const std::string& file) const;
    // The shard holding `name`, after checking that the tensor is there with `shape` and a
    // floating-point dtype (FormatError / ShapeError naming the shard and the tensor).
    const SafetensorsFile& checked(const std::string&          name,
                                   const std::vector<int64_t>& shape) const;

    std::string                                                     dir_;
    LlamaConfig                                                     config_;
    std::map<std::string, std::string>                              weight_map_;  // name → shard
    mutable std::map<std::string, std::unique_ptr<SafetensorsFile>> shards_;
    mutable std::set<std::string>                                   used_;
    mutable std::uint64_t                                           bytes_loaded_ = 0;
};

}  // namespace rq::io
