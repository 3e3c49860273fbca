// model.requant.h5: writing, inspecting, exporting (requant/store/checkpoint.h).
#include "requant/store/checkpoint.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "requant/error.h"
#include "requant/io/h5.h"
#include "requant/io/safetensors.h"
#include "requant/model/weights.h"
#include "requant/quant/quantized.h"
#include "requant/quant/sparse.h"
#include "requant/store/state.h"
#include "requant/units.h"

namespace rq::store {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFormat       = "requant-dist checkpoint 1";
const char* const kTokenizerFiles[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                       "special_tokens_map.json", "generation_config.json"};

std::string layer_group(int64_t l) {
    char name[32];
    std::snprintf(name, sizeof name, "/layers/%03lld", (long long)l);
    return name;
}

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(path + ": cannot read: " + errno_string());
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

bool is_linear(const std::string& name, int64_t n_layer) {
    for (int64_t l = 0; l < n_layer; ++l)
        for (const auto lin : model::kLinears)
            if (name == model::linear_tensor_name(l, lin)) return true;
    return false;
}

io::H5File open_checkpoint(const std::string& path) {
    io::H5File f(path, io::H5File::Mode::Read);
    if (!f.exists("/layers") || f.attr_string("/", "format") != kFormat)
        throw FormatError(path + ": not a requant-dist checkpoint (model.requant.h5)");
    return f;
}

}  // namespace

quant::StorageBits storage_bits(const decompose::LayerQuant& q) {
    quant::StorageBits b;
    for (const auto& l : q) b += quant::storage_bits(l);
    return b;
}

std::string final_checkpoint_path(const std::string& out) {
    return out + "/model.requant.h5";
}

void write_final_checkpoint(const std::string& out, int64_t n_layer, const io::HfCheckpoint& src,
                            const std::string& run_fp, const nlohmann::json& root) {
    io::H5File f(final_checkpoint_path(out), io::H5File::Mode::Create);
    f.set_attr("/", "format", std::string(kFormat));
    f.set_attr("/", "source_model", src.dir());
    f.set_attr("/", "run", run_fp);
    f.set_attr("/", "n_layer", n_layer);
    f.set_attr("/", "config_json", read_bytes(src.dir() + "/config.json"));
    for (const auto& [k, v] : root.items()) {
        if (v.is_string()) f.set_attr("/", k, v.get<std::string>());
        if (v.is_number_integer()) f.set_attr("/", k, v.get<int64_t>());
        if (v.is_number_float()) f.set_attr("/", k, v.get<double>());
    }
    for (int64_t l = 0; l < n_layer; ++l) {
        auto q = read_layer_state(out, l, run_fp);
        if (!q) throw StateError(layer_state_path(out, l) + ": missing or damaged at assembly");
        write_layer_quant(f, layer_group(l), *q);
    }
    for (const auto& name : src.tensor_names()) {
        if (is_linear(name, n_layer)) continue;
        at::Tensor t = src.load_stored(name);
        if (t.scalar_type() == at::kBFloat16) t = t.to(at::kFloat);  // exact; HDF5 has no bf16
        f.write("/tensors/" + name, t);
    }
    for (const char* name : kTokenizerFiles) {
        const std::string p = src.dir() + "/" + name;
        if (!fs::exists(p)) continue;
        const std::string b = read_bytes(p);
        f.write(std::string("/tokenizer/") + name,
                at::from_blob(const_cast<char*>(b.data()), {int64_t(b.size())}, at::kByte));
    }
    f.commit();
}

nlohmann::json inspect_checkpoint(const std::string& path) {
    const io::H5File f = open_checkpoint(path);
    nlohmann::json   s;
    s["file"]    = path;
    s["model"]   = f.attr_string("/", "source_model");
    s["method"]  = f.attr_string("/", "method");
    s["bits"]    = f.attr_int("/", "bits");
    s["n_layer"] = f.attr_int("/", "n_layer");
    quant::StorageBits total;
    s["layers"] = nlohmann::json::array();
    for (int64_t l = 0; l < f.attr_int("/", "n_layer"); ++l) {
        const decompose::LayerQuant q = read_layer_quant(f, layer_group(l));
        nlohmann::json              layer{{"layer", l}, {"linears", nlohmann::json::array()}};
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const quant::StorageBits b = quant::storage_bits(q[i]);
            layer["linears"].push_back(
                {{"name", model::linear_name(model::kLinears[i])},
                 {"shape", {q[i].dense.out_features(), q[i].dense.in_features()}},
                 {"bits", q[i].dense.bits},
                 {"group_size", q[i].dense.group_size},
                 {"lut", q[i].dense.is_lut()},
                 {"bits_per_weight", b.bits_per_weight()},
                 {"outliers", b.outliers},
                 {"significant", b.significant}});
        }
        const quant::StorageBits b = storage_bits(q);
        layer.update({{"bits_per_weight", b.bits_per_weight()},
                      {"bits_per_weight_paper", b.bits_per_weight_paper()},
                      {"bytes", (b.dense + b.sparse) / 8},
                      {"outliers", b.outliers},
                      {"significant", b.significant}});
        s["layers"].push_back(layer);
        total += b;
    }
    double other = 0;
    for (const auto& name : f.children("/tensors"))
        other += double(f.read("/tensors/" + name).numel());
    s["linear_weights"]        = total.weights;
    s["bits_per_weight"]       = total.bits_per_weight();
    s["bits_per_weight_paper"] = total.bits_per_weight_paper();
    s["outliers"]              = total.outliers;
    s["significant"]           = total.significant;
    s["linear_bytes"]          = (total.dense + total.sparse) / 8;
    s["other_params"]          = other;
    s["memory_gib"]            = ((total.dense + total.sparse) / 8 + 2 * other) / kGiB;
    return s;
}

std::string format_inspection(const nlohmann::json& s) {
    std::ostringstream o;
    char               line[256];
    o << s["file"].get<std::string>() << ": " << s["method"].get<std::string>() << " "
      << s["bits"].get<int64_t>() << "-bit, " << s["n_layer"].get<int64_t>() << " layers, model "
      << s["model"].get<std::string>() << "\n";
    o << "layer  bits/w  bits/w(paper)       KiB  outliers  significant\n";
    for (const auto& l : s["layers"]) {
        std::snprintf(line, sizeof line, "%5lld  %6.3f  %13.3f  %8.1f  %8.0f  %11.0f\n",
                      (long long)l["layer"].get<int64_t>(), l["bits_per_weight"].get<double>(),
                      l["bits_per_weight_paper"].get<double>(), l["bytes"].get<double>() / 1024,
                      l["outliers"].get<double>(), l["significant"].get<double>());
        o << line;
    }
    std::snprintf(line, sizeof line,
                  "total: %.0f linear weights at %.3f bits/weight (paper accounting %.3f), "
                  "%.0f outliers, %.0f significant; %.4f GiB with the other %.0f parameters "
                  "at 16 bits\n",
                  s["linear_weights"].get<double>(), s["bits_per_weight"].get<double>(),
                  s["bits_per_weight_paper"].get<double>(), s["outliers"].get<double>(),
                  s["significant"].get<double>(), s["memory_gib"].get<double>(),
                  s["other_params"].get<double>());
    o << line;
    return o.str();
}

void export_hf(const std::string& from, const std::string& out_dir, const std::string& dtype) {
    const std::string path = fs::is_directory(from) ? final_checkpoint_path(from) : from;
    if (!fs::exists(path))
        throw IoError(path + ": no such file (a finished run directory has model.requant.h5)");
    const std::map<std::string, at::ScalarType> types{
        {"f32", at::kFloat}, {"bf16", at::kBFloat16}, {"f16", at::kHalf}};
    if (!types.count(dtype)) throw ConfigError("--dtype must be f32, bf16 or f16, not " + dtype);
    const at::ScalarType st = types.at(dtype);
    const io::H5File     f  = open_checkpoint(path);

    std::map<std::string, at::Tensor> tensors;
    const int64_t                     L = f.attr_int("/", "n_layer");
    for (int64_t l = 0; l < L; ++l) {
        const decompose::LayerQuant q = read_layer_quant(f, layer_group(l));
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            tensors[model::linear_tensor_name(l, model::kLinears[i])] =
                quant::reconstruct(q[i]).to(st);
    }
    for (const auto& name : f.children("/tensors"))
        tensors[name] = f.read("/tensors/" + name).to(st);

    fs::create_directories(out_dir);
    io::write_safetensors(out_dir + "/model.safetensors", tensors, {{"format", "pt"}});
    auto cfg           = nlohmann::json::parse(f.attr_string("/", "config_json"));
    cfg["torch_dtype"] = dtype == "f32" ? "float32" : dtype == "bf16" ? "bfloat16" : "float16";
    std::ofstream(out_dir + "/config.json") << cfg.dump(2) << "\n";
    if (f.exists("/tokenizer"))
        for (const auto& name : f.children("/tokenizer")) {
            const at::Tensor b = f.read("/tokenizer/" + name);
            std::ofstream    o(out_dir + "/" + name, std::ios::binary);
            o.write(static_cast<const char*>(b.data_ptr()), b.numel());
            if (!o) throw IoError(out_dir + "/" + name + ": cannot write: " + errno_string());
        }
    spdlog::info("export: {} tensors ({}) to {}", tensors.size(), dtype, out_dir);
}

}  // namespace rq::store
