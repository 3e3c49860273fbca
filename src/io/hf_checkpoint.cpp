// Hugging Face model folders (requant/io/hf_checkpoint.h).
#include "requant/io/hf_checkpoint.h"

#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "requant/error.h"

namespace rq::io {
namespace {

bool file_exists(const std::string& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0;
}

}  // namespace

HfCheckpoint::HfCheckpoint(std::string dir) : dir_(std::move(dir)) {
    while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
    const std::string cfg = dir_ + "/config.json";
    if (!file_exists(cfg)) throw IoError(cfg + ": not found (is '" + dir_ + "' a model folder?)");
    config_ = load_llama_config(cfg);

    const std::string index  = dir_ + "/model.safetensors.index.json";
    const std::string single = dir_ + "/model.safetensors";
    if (file_exists(index)) {
        std::ifstream in(index);
        if (!in) throw IoError(index + ": cannot open: " + errno_string());
        std::stringstream ss;
        ss << in.rdbuf();
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(ss.str());
        } catch (const nlohmann::json::exception& e) {
            throw FormatError(index + ": not valid JSON: " + e.what());
        }
        if (!j.contains("weight_map") || !j["weight_map"].is_object())
            throw FormatError(index + ": has no weight_map object");
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
            if (!it->is_string() || it->get<std::string>().find('/') != std::string::npos)
                throw FormatError(index + ": weight_map entry for '" + it.key() +
                                  "' is not a file name in the model folder");
            weight_map_[it.key()] = it->get<std::string>();
        }
    } else if (file_exists(single)) {
        for (const auto& t : shard("model.safetensors").tensors())
            weight_map_[t.name] = "model.safetensors";
    } else {
        throw IoError(dir_ + ": neither model.safetensors nor model.safetensors.index.json found");
    }
}

const SafetensorsFile& HfCheckpoint::shard(const std::string& file) const {
    auto& slot = shards_[file];
    if (!slot) slot = std::make_unique<SafetensorsFile>(dir_ + "/" + file);
    return *slot;
}

bool HfCheckpoint::contains(const std::string& name) const {
    return weight_map_.count(name) > 0;
}

std::vector<std::string> HfCheckpoint::tensor_names() const {
    std::vector<std::string> names;
    for (const auto& kv : weight_map_) names.push_back(kv.first);
    return names;
}

at::Tensor HfCheckpoint::load_stored(const std::string& name) const {
    const auto it = weight_map_.find(name);
    if (it == weight_map_.end())
        throw FormatError(dir_ + ": tensor '" + name + "' is missing from the checkpoint");
    return shard(it->second).load(name);
}

const SafetensorsFile& HfCheckpoint::checked(const std::string&          name,
                                             const std::vector<int64_t>& shape) const {
    const auto it = weight_map_.find(name);
    if (it == weight_map_.end())
        throw FormatError(dir_ + ": tensor '" + name + "' is missing from the checkpoint");
    const SafetensorsFile& f    = shard(it->second);
    const TensorInfo*      info = f.find(name);
    if (info == nullptr)
        throw FormatError(it->second + ": tensor '" + name +
                          "' is listed in model.safetensors.index.json but missing from the file");
    if (info->shape != shape)
        throw ShapeError(it->second + ": tensor '" + name + "' has wrong shape; expected " +
                         shape_string(shape) + ", got " + shape_string(info->shape));
    switch (info->dtype) {
        case DType::F32:
        case DType::F16:
        case DType::BF16:
        case DType::F64:
            break;
        default:
            throw ShapeError(it->second + ": tensor '" + name + "' has dtype " +
                             dtype_name(info->dtype) + "; weights must be F64, F32, F16 or BF16");
    }
    if (used_.insert(name).second) bytes_loaded_ += info->end - info->begin;
    return f;
}

at::Tensor HfCheckpoint::load(const std::string& name, const std::vector<int64_t>& shape,
                              at::ScalarType dtype) const {
    return checked(name, shape).load(name, dtype, Finite::require);
}

at::Tensor HfCheckpoint::view(const std::string& name, const std::vector<int64_t>& shape) const {
    return checked(name, shape).view(name);
}

std::vector<std::string> HfCheckpoint::unused() const {
    std::vector<std::string> out;
    for (const auto& kv : weight_map_)
        if (!used_.count(kv.first)) out.push_back(kv.first);
    return out;
}

}  // namespace rq::io
