// model.requant.h5: writing, inspecting, exporting (requant/store/checkpoint.h).
#include "requant/store/checkpoint.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <utility>

#include "requant/error.h"
#include "requant/io/atomic_file.h"
#include "requant/io/h5.h"
#include "requant/io/safetensors.h"
#include "requant/model/weights.h"
#include "requant/quant/qtip.h"
#include "requant/quant/quantized.h"
#include "requant/quant/sparse.h"
#include "requant/store/state.h"
#include "requant/units.h"

namespace rq::store {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFormat       = "requant-dist checkpoint 1";
constexpr const char* kFoldedGroup  = "/folded/";  // AWQ's folded norms (HDF5 group)
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

// QTIP's model-wide parts, from one layer's linears (all layers have the same shapes).
struct QtipShared {
    const quant::TrellisDense* first = nullptr;  // null: not a QTIP model
    int                        K     = 0;
    std::vector<int64_t>       odd;  // odd parts of the padded dimensions (Kronecker factors)
};
QtipShared qtip_shared(const decompose::LayerQuant& q) {
    QtipShared           s;
    std::vector<int64_t> dims;
    for (const auto& l : q)
        if (l.dense.is_trellis()) {
            if (!s.first) s.first = &l.dense.trellis, s.K = l.dense.bits;
            dims.push_back(l.dense.trellis.words.size(0) * quant::kQtipTile);
            dims.push_back(l.dense.trellis.words.size(1) * quant::kQtipTile);
        }
    s.odd = quant::qtip_odd_parts(dims);
    return s;
}

// What every QTIP linear of the model shares, for readers of the file (requant-dist itself
// rebuilds it from the code and factor_seed): root attributes qtip_*, /qtip/lut, /qtip/factors.
void write_qtip_shared(io::H5File& f, const QtipShared& s) {
    f.set_attr("/", "qtip_code", std::string(quant::name(s.first->code)));
    f.set_attr("/", "qtip_K", int64_t(s.K));
    f.set_attr("/", "qtip_L", int64_t(quant::kTrellisL));
    f.set_attr("/", "qtip_V", int64_t(s.first->code == quant::TrellisCode::Hyb ? 2 : 1));
    f.set_attr("/", "qtip_tile", int64_t(quant::kQtipTile));
    f.set_attr("/", "qtip_factor_seed", int64_t(s.first->factor_seed));
    f.set_attr(
        "/", "qtip_weight",
        std::string("W = (diag(S_rows) U_rows (wscale X) U_cols^T diag(S_cols))[:rows, "
                    ":cols]; U_n = kron(Q_m^T, H_{n/m}) for n = m 2^p, H the normalised "
                    "Sylvester Hadamard matrix, Q_m = /qtip/factors/m (identity for m = 1)"));
    const std::string group = "/qtip";  // an HDF5 group of the checkpoint
    if (s.first->code == quant::TrellisCode::Hyb) f.write(group + "/lut", quant::qtip_hyb_lut());
    for (int64_t m : s.odd)
        f.write(group + "/factors/" + std::to_string(m),
                quant::kron_factor(m, s.first->factor_seed));
}

// AWQ: the layer's RMSNorm weights with the input scales of q/k/v and gate/up folded in.
void write_folded_norms(io::H5File& f, const io::HfCheckpoint& src, int64_t l,
                        const decompose::LayerQuant& q) {
    const std::pair<model::Linear, model::LayerNorm> folds[] = {
        {model::Linear::Q, model::LayerNorm::Attn}, {model::Linear::Gate, model::LayerNorm::Ffn}};
    for (const auto& [lin, norm] : folds) {
        const at::Tensor& s = q[std::size_t(lin)].dense.in_scale;
        if (!s.defined()) continue;
        const std::string name = model::norm_tensor_name(l, norm);
        f.write(kFoldedGroup + name, src.load_stored(name).to(at::kFloat) / s.to(at::kFloat));
    }
}

}  // namespace

quant::StorageBits storage_bits(const decompose::LayerQuant& q) {
    quant::StorageBits b;
    for (const auto& l : q) b += quant::storage_bits(l);
    return b;
}

double shared_storage_bits(const decompose::LayerQuant& q) {
    const QtipShared s = qtip_shared(q);
    return s.first ? quant::qtip_shared_bits(s.first->code, s.odd) : 0.0;
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
        if (l == 0)
            if (const QtipShared s = qtip_shared(*q); s.first) write_qtip_shared(f, s);
        write_layer_quant(f, layer_group(l), *q);
        write_folded_norms(f, src, l, *q);
        if (auto e = read_layer_errors(out, l, run_fp))
            f.write(layer_group(l) + "/errors", errors_tensor(*e));
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

nlohmann::json errors_json(const decompose::LinearErrors& e) {
    auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); };
    return {{"objective_dense", num(e.objective_dense)}, {"objective", num(e.objective)},
            {"proxy_dense", num(e.proxy_dense)},         {"proxy", num(e.proxy)},
            {"weight_dense", num(e.weight_dense)},       {"weight", num(e.weight)}};
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
    s["layers"]      = nlohmann::json::array();
    s["shared_bits"] = 0.0;
    for (int64_t l = 0; l < f.attr_int("/", "n_layer"); ++l) {
        const decompose::LayerQuant q = read_layer_quant(f, layer_group(l));
        if (l == 0) s["shared_bits"] = shared_storage_bits(q);
        nlohmann::json    layer{{"layer", l}, {"linears", nlohmann::json::array()}};
        const std::string eg = layer_group(l) + "/errors";
        std::optional<decompose::LayerErrors> errors;
        if (f.exists(eg)) errors = errors_from_tensor(f.read(eg));
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const quant::StorageBits b = quant::storage_bits(q[i]);
            nlohmann::json           lin{
                {"name", model::linear_name(model::kLinears[i])},
                {"shape", {q[i].dense.out_features(), q[i].dense.in_features()}},
                {"bits", q[i].dense.bits},
                {"group_size", q[i].dense.group_size},
                {"lut", q[i].dense.is_lut()},
                {"bits_per_weight", b.bits_per_weight()},
                {"dense_bits", b.dense},
                {"sparse_bits", b.sparse},
                {"outlier_bits", double(quant::csr_storage_bits(q[i].outliers))},
                {"significant_bits", double(quant::csr_storage_bits(q[i].significant))},
                {"outliers", b.outliers},
                {"significant", b.significant}};
            if (errors) lin["errors"] = errors_json((*errors)[i]);
            layer["linears"].push_back(lin);
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
    total.dense += s["shared_bits"].get<double>();  // once per model
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

namespace {

// "proxy 1.2e-02 -> 3.4e-03" (or "weight ..." where no proxy was computed); "-" without errors.
std::string mean_errors(const nlohmann::json& linears) {
    for (const char* kind : {"proxy", "weight"}) {
        double      dense = 0, final = 0;
        int         n = 0;
        std::string d = std::string(kind) + "_dense";
        for (const auto& lin : linears)
            if (lin.contains("errors") && lin["errors"][kind].is_number()) {
                dense += lin["errors"][d].get<double>();
                final += lin["errors"][kind].get<double>();
                ++n;
            }
        if (n == 0) continue;
        char b[96];
        std::snprintf(b, sizeof b, "%s %.2e -> %.2e", kind, dense / n, final / n);
        return b;
    }
    return "-";
}

}  // namespace

std::string format_inspection(const nlohmann::json& s) {
    std::ostringstream o;
    char               line[256];
    o << s["file"].get<std::string>() << ": " << s["method"].get<std::string>() << " "
      << s["bits"].get<int64_t>() << "-bit, " << s["n_layer"].get<int64_t>() << " layers, model "
      << s["model"].get<std::string>() << "\n";
    o << "layer  bits/w  bits/w(paper)       KiB  outliers  significant  "
         "error (mean over linears: dense alone -> with sparse; proxy where X was kept)\n";
    for (const auto& l : s["layers"]) {
        std::snprintf(line, sizeof line, "%5lld  %6.3f  %13.3f  %8.1f  %8.0f  %11.0f  ",
                      (long long)l["layer"].get<int64_t>(), l["bits_per_weight"].get<double>(),
                      l["bits_per_weight_paper"].get<double>(), l["bytes"].get<double>() / 1024,
                      l["outliers"].get<double>(), l["significant"].get<double>());
        o << line << mean_errors(l["linears"]) << "\n";
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

namespace {

// One tensor of an export: where it comes from and its shape; nothing read.
struct ExportTensor {
    std::string          name;         // HF name
    int64_t              layer  = -1;  // decoder layer of a quantized linear, else -1
    std::size_t          linear = 0;   // kLinears index when layer >= 0
    std::vector<int64_t> shape;
};

// Every tensor of the checkpoint, in name order (the order of the safetensors files).
std::vector<ExportTensor> export_tensors(const io::H5File& f) {
    std::vector<ExportTensor> out;
    const int64_t             L = f.attr_int("/", "n_layer");
    for (int64_t l = 0; l < L; ++l)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const std::string g = layer_group(l) + "/" + model::linear_name(model::kLinears[i]);
            out.push_back({model::linear_tensor_name(l, model::kLinears[i]),
                           l,
                           i,
                           {f.attr_int(g, "rows"), f.attr_int(g, "cols")}});
        }
    for (const auto& name : f.children("/tensors"))
        out.push_back({name, -1, 0, f.shape("/tensors/" + name)});
    std::sort(out.begin(), out.end(),
              [](const ExportTensor& a, const ExportTensor& b) { return a.name < b.name; });
    return out;
}

int64_t export_bytes(const ExportTensor& t, at::ScalarType st) {
    int64_t n = int64_t(c10::elementSize(st));
    for (int64_t d : t.shape) n *= d;
    return n;
}

// Consecutive runs of tensors of at most `max_bytes` each (a larger tensor is a shard alone).
std::vector<std::vector<std::size_t>> plan_shards(const std::vector<ExportTensor>& ts,
                                                  at::ScalarType st, int64_t max_bytes) {
    std::vector<std::vector<std::size_t>> shards;
    int64_t                               used = 0;
    for (std::size_t k = 0; k < ts.size(); ++k) {
        const int64_t b = export_bytes(ts[k], st);
        if (shards.empty() || (used + b > max_bytes && used > 0)) shards.emplace_back(), used = 0;
        shards.back().push_back(k);
        used += b;
    }
    return shards;
}

// The model files a previous export may have left in `dir`: replaced, never mixed.
void remove_old_shards(const std::string& dir) {
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        if (n == "model.safetensors" || n == "model.safetensors.index.json" ||
            (n.rfind("model-", 0) == 0 && n.find("-of-") != std::string::npos &&
             e.path().extension() == ".safetensors"))
            fs::remove(e.path());
    }
}

std::string shard_name(std::size_t k, std::size_t n) {
    if (n == 1) return "model.safetensors";
    char b[64];
    std::snprintf(b, sizeof b, "model-%05zu-of-%05zu.safetensors", k + 1, n);
    return b;
}

// The tensors of one shard, materialised: W_hat of the linears (their layer read once), the
// other tensors as stored; all in `st`.
std::map<std::string, at::Tensor> shard_tensors(const io::H5File&                f,
                                                const std::vector<ExportTensor>& ts,
                                                const std::vector<std::size_t>&  idx,
                                                at::ScalarType st, int64_t& cached_layer,
                                                decompose::LayerQuant& cached) {
    std::map<std::string, at::Tensor> out;
    for (std::size_t k : idx) {
        const ExportTensor& t = ts[k];
        if (t.layer < 0) {
            out[t.name] = f.read("/tensors/" + t.name).to(st);
            continue;
        }
        if (cached_layer != t.layer) {
            cached       = read_layer_quant(f, layer_group(t.layer));
            cached_layer = t.layer;
        }
        out[t.name] = quant::reconstruct(cached[t.linear]).to(st);
    }
    return out;
}

void write_export_extras(const io::H5File& f, const std::string& out_dir,
                         const std::string& dtype) {
    auto cfg           = nlohmann::json::parse(f.attr_string("/", "config_json"));
    cfg["torch_dtype"] = dtype == "f32" ? "float32" : dtype == "bf16" ? "bfloat16" : "float16";
    io::write_file_atomic(out_dir + "/config.json", cfg.dump(2) + "\n");
    if (f.exists("/tokenizer"))
        for (const auto& name : f.children("/tokenizer")) {
            const at::Tensor b = f.read("/tokenizer/" + name);
            io::write_file_atomic(out_dir + "/" + name,
                                  {static_cast<const char*>(b.data_ptr()), std::size_t(b.numel())});
        }
}

}  // namespace

void export_hf(const std::string& from, const std::string& out_dir, const std::string& dtype,
               int64_t max_shard_bytes) {
    const std::string path = fs::is_directory(from) ? final_checkpoint_path(from) : from;
    if (!fs::exists(path))
        throw IoError(path + ": no such file (a finished run directory has model.requant.h5)");
    const std::map<std::string, at::ScalarType> types{
        {"f32", at::kFloat}, {"bf16", at::kBFloat16}, {"f16", at::kHalf}};
    if (!types.count(dtype)) throw ConfigError("--dtype must be f32, bf16 or f16, not " + dtype);
    if (max_shard_bytes < 1) throw ConfigError("--max-shard-size must be at least 1 byte");
    const at::ScalarType st = types.at(dtype);
    const io::H5File     f  = open_checkpoint(path);

    const std::vector<ExportTensor> ts     = export_tensors(f);
    const auto                      shards = plan_shards(ts, st, max_shard_bytes);
    fs::create_directories(out_dir);
    remove_old_shards(out_dir);
    nlohmann::json        weight_map = nlohmann::json::object();
    int64_t               total = 0, cached_layer = -1;
    decompose::LayerQuant cached;
    for (std::size_t k = 0; k < shards.size(); ++k) {  // one shard in memory at a time
        const std::string name = shard_name(k, shards.size());
        io::write_safetensors(out_dir + "/" + name,
                              shard_tensors(f, ts, shards[k], st, cached_layer, cached),
                              {{"format", "pt"}});
        for (std::size_t i : shards[k]) {
            weight_map[ts[i].name] = name;
            total += export_bytes(ts[i], st);
        }
    }
    if (shards.size() > 1)
        io::write_file_atomic(
            out_dir + "/model.safetensors.index.json",
            nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(
                2) +
                "\n");
    write_export_extras(f, out_dir, dtype);
    spdlog::info("export: {} tensors ({}, {} bytes) in {} file(s) to {}", ts.size(), dtype, total,
                 shards.size(), out_dir);
}

}  // namespace rq::store
