// Run-directory state: fingerprints, run.h5, per-layer files (requant/store/state.h).
#include "requant/store/state.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "requant/error.h"
#include "requant/io/digest.h"
#include "requant/quant/bitpack.h"

namespace rq::store {
namespace fs = std::filesystem;
namespace {

// State 2: the job fingerprint covers quant.awq_samples; a state 1 folder cannot match it.
constexpr const char* kRunFormat   = "requant-dist run state 2";
constexpr const char* kOldFormat   = "requant-dist run state 1";
constexpr const char* kLayerFormat = "requant-dist layer state 1";
const std::string     kData        = "/data";  // run.h5: the tokenized sequences
const std::string     kCalib       = kData + "/calibration";

// A safetensors file's identity without reading its tensors: size, then the JSON header.
void add_safetensors_header(io::Sha256& h, const fs::path& p) {
    std::FILE* f = std::fopen(p.c_str(), "rb");
    if (!f) throw IoError(p.string() + ": cannot read: " + errno_string());
    uint64_t    n  = 0;
    bool        ok = std::fread(&n, 8, 1, f) == 1 && n < (uint64_t(1) << 32);
    std::string header(ok ? n : 0, '\0');
    ok = ok && std::fread(header.data(), 1, header.size(), f) == header.size();
    std::fclose(f);
    if (!ok) throw FormatError(p.string() + ": not a safetensors file (header cannot be read)");
    h.add(p.filename().string()).add(std::to_string(fs::file_size(p))).add(header);
}

std::string j(const std::string& a, const std::string& b) {
    return a + "/" + b;
}

void write_csr(io::H5File& f, const std::string& g, const quant::SparseCsr& s) {
    if (!s.indptr.defined()) return;
    f.write(j(g, "indptr"), s.indptr);
    f.write(j(g, "indices"), s.indices);
    if (s.values.defined()) f.write(j(g, "values"), s.values);
    f.set_attr(g, "rows", s.rows);
    f.set_attr(g, "cols", s.cols);
}
quant::SparseCsr read_csr(const io::H5File& f, const std::string& g) {
    quant::SparseCsr s;
    if (!f.exists(g)) return s;
    s.rows    = f.attr_int(g, "rows");
    s.cols    = f.attr_int(g, "cols");
    s.indptr  = f.read(j(g, "indptr"));
    s.indices = f.read(j(g, "indices"));
    if (f.exists(j(g, "values"))) s.values = f.read(j(g, "values"));
    return s;
}

}  // namespace

std::string Fingerprint::combined() const {
    return io::Sha256().add(model).add(data).add(job).hex();
}

Fingerprint fingerprint(const io::Job& job, const std::string& model_dir) {
    Fingerprint fp;
    io::Sha256  m;
    m.add_file(j(model_dir, "config.json"));
    std::vector<fs::path> shards;
    for (const auto& e : fs::directory_iterator(model_dir))
        if (e.path().extension() == ".safetensors" &&
            e.path().filename() != "reference.safetensors")
            shards.push_back(e.path());
    std::sort(shards.begin(), shards.end());
    for (const auto& p : shards) add_safetensors_header(m, p);
    fp.model = m.hex();

    io::Sha256 d;
    d.add(io::base_name(job.data.calibration)).add_file(job.data.calibration);
    for (const auto& e : job.data.eval) d.add(io::base_name(e)).add_file(e);
    // Text is read through the model folder's tokenizer: its files shape the data too.
    bool text = false;
    for (const auto& e : job.data.eval) text = text || fs::path(e).extension() != ".safetensors";
    text = text || fs::path(job.data.calibration).extension() != ".safetensors";
    if (text)
        for (const char* name : {"tokenizer.json", "tokenizer.model"})
            if (fs::exists(j(model_dir, name))) d.add(name).add_file(j(model_dir, name));
    fp.data = d.hex();

    io::Job k    = job;  // what shapes the result, not where things live
    k.run.out    = "";
    k.model.path = "";
    k.data.calibration.clear();
    for (auto& e : k.data.eval) e = io::base_name(e);
    // run.mem_gib shapes the schedule, never a result: its line is left out, so that a run
    // resumes under another budget and fingerprints of versions before the key stay valid;
    // so are run.mem_check and run.rank_timeout, which shape nothing.
    // run.replicas = 1 is left out too (the fingerprints of versions before the key), and the
    // qtip keys for other methods (they shape nothing there), static_groups and
    // true_sequential outside GPTQ, the kmeans_init/seed keys outside SqueezeLLM and
    // requant.holdout when off.
    // The AWQ keys shape nothing outside AWQ: there awq_loss is left out and awq_samples
    // written at its earlier default (2048), so fingerprints of earlier versions stay valid.
    if (k.quant.method != io::QuantMethod::Awq) k.quant.awq_samples = 2048;
    std::string toml = io::job_to_toml(k);
    auto        drop = [&toml](const std::string& line_start) {
        const auto at = toml.find("\n" + line_start);
        if (at != std::string::npos) toml.erase(at + 1, toml.find('\n', at + 1) - at);
    };
    drop("mem_gib "), drop("mem_check "), drop("rank_timeout ");
    if (k.run.replicas == 1) drop("replicas ");
    if (k.quant.method != io::QuantMethod::Qtip) drop("qtip_code "), drop("qtip_seed ");
    if (k.quant.method != io::QuantMethod::Gptq) drop("static_groups "), drop("true_sequential ");
    if (k.quant.method != io::QuantMethod::SqueezeLlm) drop("kmeans_init "), drop("kmeans_seed ");
    if (k.quant.method != io::QuantMethod::Awq) drop("awq_loss ");
    if (k.requant.holdout == 0) drop("holdout ");
    fp.job = io::Sha256().add(toml).hex();
    return fp;
}

void RunState::mark(const std::string& phase, double seconds) {
    done_s[phase]  = seconds;
    phase_s[phase] = seconds;
}

namespace {
nlohmann::json log_json(const RunState& s) {
    nlohmann::json log = nlohmann::json::object();
    if (!s.done_s.empty()) log["done"] = s.done_s;
    if (!s.phase_s.empty()) log["phases"] = s.phase_s;
    if (s.ppl_fp) log["ppl_fp"] = *s.ppl_fp;
    if (s.ppl_q) log["ppl_q"] = *s.ppl_q;
    if (!s.requant.empty()) log["requant"] = s.requant;
    if (s.detach_rounds_done > 0)
        log["detach"] = {{"rounds_done", s.detach_rounds_done},
                         {"rounds", decompose::rounds_json(s.detach_rounds)}};
    return log;
}
void read_log(const nlohmann::json& log, RunState& s) {
    if (log.contains("done")) s.done_s = log["done"].get<std::map<std::string, double>>();
    if (log.contains("phases")) s.phase_s = log["phases"].get<std::map<std::string, double>>();
    if (log.contains("ppl_fp")) s.ppl_fp = log["ppl_fp"].get<Perplexities>();
    if (log.contains("ppl_q")) s.ppl_q = log["ppl_q"].get<Perplexities>();
    if (log.contains("requant")) s.requant = log["requant"];
    if (log.contains("detach")) {
        s.detach_rounds_done = log["detach"].at("rounds_done").get<int>();
        s.detach_rounds      = decompose::rounds_from_json(log["detach"].at("rounds"));
    }
}
}  // namespace

std::string RunState::records() const {
    return log_json(*this).dump();
}
void RunState::set_records(const std::string& log) {
    read_log(nlohmann::json::parse(log), *this);
}

std::string run_state_path(const std::string& out) {
    return j(out, "run.h5");
}

std::optional<RunState> read_run_state(const std::string& out) {
    const std::string p = run_state_path(out);
    if (!fs::exists(p)) return std::nullopt;
    try {
        io::H5File        f(p, io::H5File::Mode::Read);
        const std::string format = f.attr_string("/", "format");
        if (format == kOldFormat)
            throw StateError(out + " holds a run made by an older requant-dist (" + format +
                             "), whose job fingerprint this version cannot match; start over "
                             "with --restart, or use another --out");
        if (format != kRunFormat) throw StateError(p + ": not a requant-dist run state file");
        RunState s;
        s.fp.model        = f.attr_string("/", "fingerprint_model");
        s.fp.data         = f.attr_string("/", "fingerprint_data");
        s.fp.job          = f.attr_string("/", "fingerprint_job");
        s.calib           = f.read(kCalib);
        s.calib_available = f.attr_int(kCalib, "available");
        const auto n      = f.attr_int(kData, "n_eval");
        for (int64_t i = 0; i < n; ++i) {
            const std::string ds = kData + "/eval-" + std::to_string(i);
            s.eval_tokens.push_back(f.read(ds));
            s.eval_names.push_back(f.attr_string(ds, "name"));
        }
        s.set_records(f.attr_string("/", "log"));
        return s;
    } catch (const StateError&) {
        throw;
    } catch (const std::exception& e) {
        throw StateError(std::string(e.what()) + "\n  the run state " + p +
                         " is damaged; start over with --restart (or remove " + out + ")");
    }
}

void write_run_state(const std::string& out, const RunState& s) {
    io::H5File f(run_state_path(out), io::H5File::Mode::Create);
    f.set_attr("/", "format", std::string(kRunFormat));
    f.set_attr("/", "fingerprint_model", s.fp.model);
    f.set_attr("/", "fingerprint_data", s.fp.data);
    f.set_attr("/", "fingerprint_job", s.fp.job);
    f.write(kCalib, s.calib);
    f.set_attr(kCalib, "available", s.calib_available);
    f.set_attr(kData, "n_eval", int64_t(s.eval_tokens.size()));
    for (std::size_t i = 0; i < s.eval_tokens.size(); ++i) {
        const std::string ds = kData + "/eval-" + std::to_string(i);
        f.write(ds, s.eval_tokens[i]);
        f.set_attr(ds, "name", s.eval_names[i]);
    }
    f.set_attr("/", "log", s.records());
    f.commit();
}

namespace {

void write_trellis(io::H5File& f, const std::string& g, const quant::TrellisDense& t) {
    f.write(j(g, "trellis"), quant::words_to_bytes(t.words));
    f.write(j(g, "signs_rows"), quant::pack_flags(t.signs_rows));
    f.write(j(g, "signs_cols"), quant::pack_flags(t.signs_cols));
    f.set_attr(g, "code", std::string(quant::name(t.code)));
    f.set_attr(g, "wscale", double(t.wscale));
    f.set_attr(g, "factor_seed", int64_t(t.factor_seed));
}

quant::TrellisDense read_trellis(const io::H5File& f, const std::string& g) {
    quant::TrellisDense t;
    const std::string   code  = f.attr_string(g, "code");
    bool                known = false;
    for (quant::TrellisCode c : quant::kTrellisCodes)
        if (code == quant::name(c)) t.code = c, known = true;
    if (!known) throw FormatError(f.path() + ": " + g + ": unknown trellis code '" + code + "'");
    t.rows        = f.attr_int(g, "rows");
    t.cols        = f.attr_int(g, "cols");
    t.wscale      = float(f.attr_double(g, "wscale"));
    t.factor_seed = uint64_t(f.attr_int(g, "factor_seed"));
    t.words       = quant::bytes_to_words(f.read(j(g, "trellis")));
    if (t.words.dim() != 3 || t.words.size(0) * 16 < t.rows || t.words.size(1) * 16 < t.cols)
        throw FormatError(f.path() + ": " + g + "/trellis: its tiles do not cover " +
                          std::to_string(t.rows) + "x" + std::to_string(t.cols));
    t.signs_rows = quant::unpack_flags(f.read(j(g, "signs_rows")), t.words.size(0) * 16);
    t.signs_cols = quant::unpack_flags(f.read(j(g, "signs_cols")), t.words.size(1) * 16);
    return t;
}

}  // namespace

void write_layer_quant(io::H5File& f, const std::string& prefix, const decompose::LayerQuant& q) {
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        const std::string g = j(prefix, model::linear_name(model::kLinears[i]));
        const auto&       d = q[i].dense;
        if (d.is_trellis())  // datasets first: they make the group
            write_trellis(f, g, d.trellis);
        else
            f.write(j(g, "codes"), quant::pack_codes(d.codes, d.bits));
        f.set_attr(g, "bits", int64_t(d.bits));
        f.set_attr(g, "group_size", d.group_size);
        f.set_attr(g, "rows", d.out_features());
        f.set_attr(g, "cols", d.in_features());
        if (d.is_lut()) {
            f.write(j(g, "lut"), d.lut);
        } else if (!d.is_trellis()) {
            f.write(j(g, "scales"), d.scales);
            f.write(j(g, "zeros"), d.zeros);
        }
        if (d.g_idx.defined()) f.write(j(g, "g_idx"), d.g_idx);
        if (d.in_scale.defined()) f.write(j(g, "in_scale"), d.in_scale);
        if (d.out_scale.defined()) f.write(j(g, "out_scale"), d.out_scale);
        write_csr(f, j(g, "outliers"), q[i].outliers);
        write_csr(f, j(g, "significant"), q[i].significant);
    }
}

decompose::LayerQuant read_layer_quant(const io::H5File& f, const std::string& prefix) {
    decompose::LayerQuant q;
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        const std::string g = j(prefix, model::linear_name(model::kLinears[i]));
        auto&             d = q[i].dense;
        d.bits              = int(f.attr_int(g, "bits"));
        d.group_size        = f.attr_int(g, "group_size");
        if (f.exists(j(g, "trellis"))) {
            d.trellis = read_trellis(f, g);
        } else if (f.exists(j(g, "lut"))) {
            d.codes = quant::unpack_codes(f.read(j(g, "codes")), d.bits, f.attr_int(g, "cols"));
            d.lut   = f.read(j(g, "lut"));
        } else {
            d.codes  = quant::unpack_codes(f.read(j(g, "codes")), d.bits, f.attr_int(g, "cols"));
            d.scales = f.read(j(g, "scales"));
            d.zeros  = f.read(j(g, "zeros"));
        }
        if (f.exists(j(g, "g_idx"))) d.g_idx = f.read(j(g, "g_idx"));
        if (f.exists(j(g, "in_scale"))) d.in_scale = f.read(j(g, "in_scale"));
        if (f.exists(j(g, "out_scale"))) d.out_scale = f.read(j(g, "out_scale"));
        q[i].outliers    = read_csr(f, j(g, "outliers"));
        q[i].significant = read_csr(f, j(g, "significant"));
    }
    return q;
}

std::string layer_state_path(const std::string& out, int64_t layer) {
    char name[32];
    std::snprintf(name, sizeof name, "layer-%03lld.h5", (long long)layer);
    return j(j(out, "layers"), name);
}
std::string detach_state_path(const std::string& out, int64_t layer, int round) {
    char name[48];
    std::snprintf(name, sizeof name, "layer-%03lld.detach-%02d.h5", (long long)layer, round);
    return j(j(out, "layers"), name);
}

namespace {
// Opens a state file of this run, or says why not (nullopt).
std::optional<io::H5File> open_state(const std::string& p, const std::string& fp) {
    if (!fs::exists(p)) return std::nullopt;
    try {
        io::H5File f(p, io::H5File::Mode::Read);
        if (f.attr_string("/", "format") != kLayerFormat || f.attr_string("/", "run") != fp) {
            spdlog::warn("{}: belongs to another run; redoing its work", p);
            return std::nullopt;
        }
        return f;
    } catch (const std::exception& e) {
        spdlog::warn("{}: damaged ({}); redoing its work", p, e.what());
        return std::nullopt;
    }
}
io::H5File create_state(const std::string& p, const std::string& fp) {
    fs::create_directories(fs::path(p).parent_path());
    io::H5File f(p, io::H5File::Mode::Create);
    f.set_attr("/", "format", std::string(kLayerFormat));
    f.set_attr("/", "run", fp);
    return f;
}
}  // namespace

void write_layer_state(const std::string& out, int64_t layer, const decompose::LayerQuant& q,
                       const std::string& fp, const decompose::LayerErrors* errors) {
    io::H5File f = create_state(layer_state_path(out, layer), fp);
    f.set_attr("/", "layer", layer);
    write_layer_quant(f, "/linears", q);
    if (errors) f.write("/errors", errors_tensor(*errors));
    f.commit();
}

at::Tensor errors_tensor(const decompose::LayerErrors& e) {
    at::Tensor t = at::empty({int64_t(model::kNumLinears), 6}, at::kDouble);
    auto       a = t.accessor<double, 2>();
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        const auto&  x    = e[i];
        const double v[6] = {x.objective_dense, x.objective,    x.proxy_dense,
                             x.proxy,           x.weight_dense, x.weight};
        for (int64_t c = 0; c < 6; ++c) a[int64_t(i)][c] = v[c];
    }
    return t;
}

decompose::LayerErrors errors_from_tensor(const at::Tensor& t) {
    if (t.dim() != 2 || t.size(0) != int64_t(model::kNumLinears) || t.size(1) != 6)
        throw FormatError("layer errors: expected [7, 6], got " + std::to_string(t.dim()) + "-d");
    const at::Tensor       d = t.to(at::kDouble).contiguous();
    auto                   a = d.accessor<double, 2>();
    decompose::LayerErrors e;
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        const int64_t r = int64_t(i);
        e[i]            = {a[r][0], a[r][1], a[r][2], a[r][3], a[r][4], a[r][5]};
    }
    return e;
}

std::optional<decompose::LayerErrors> read_layer_errors(const std::string& out, int64_t layer,
                                                        const std::string& fp) {
    auto f = open_state(layer_state_path(out, layer), fp);
    if (!f || !f->exists("/errors")) return std::nullopt;
    return errors_from_tensor(f->read("/errors"));
}

std::optional<decompose::LayerQuant> read_layer_state(const std::string& out, int64_t layer,
                                                      const std::string& fp) {
    const std::string p = layer_state_path(out, layer);
    auto              f = open_state(p, fp);
    if (!f) return std::nullopt;
    try {
        if (f->attr_int("/", "layer") != layer) throw StateError("holds another layer");
        return read_layer_quant(*f, "/linears");
    } catch (const std::exception& e) {
        spdlog::warn("{}: damaged ({}); redoing its work", p, e.what());
        return std::nullopt;
    }
}

void write_detach_state(const std::string& out, int64_t layer, int round,
                        const model::LayerTensors& picked, const std::string& fp) {
    io::H5File f = create_state(detach_state_path(out, layer, round), fp);
    f.set_attr("/", "layer", layer);
    f.set_attr("/", "round", int64_t(round));
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        quant::SparseCsr s = quant::csr_from_mask(at::zeros(picked[i].sizes()), picked[i]);
        s.values           = at::Tensor();  // positions only
        write_csr(f, j("/picked", model::linear_name(model::kLinears[i])), s);
    }
    f.commit();
}

std::optional<model::LayerTensors> read_detach_state(const std::string& out, int64_t layer,
                                                     int round, const std::string& fp) {
    const std::string p = detach_state_path(out, layer, round);
    auto              f = open_state(p, fp);
    if (!f) return std::nullopt;
    try {
        if (f->attr_int("/", "layer") != layer || f->attr_int("/", "round") != round)
            throw StateError("holds another layer or round");
        model::LayerTensors m;
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            m[i] =
                quant::csr_mask(read_csr(*f, j("/picked", model::linear_name(model::kLinears[i]))));
        return m;
    } catch (const std::exception& e) {
        spdlog::warn("{}: damaged ({}); redoing its work", p, e.what());
        return std::nullopt;
    }
}

int read_detach_rounds(parallel::Transport& t, const std::string& out, int64_t layer_begin,
                       const model::StageTensors& like, int done, const std::string& fp,
                       model::StageTensors& picked, parallel::Transport* across) {
    auto read_all = [&](int k, bool merge) {
        for (std::size_t il = 0; il < like.size(); ++il) {
            auto m = read_detach_state(out, layer_begin + int64_t(il), k, fp);
            if (!m) return false;
            if (merge)
                for (std::size_t i = 0; i < model::kNumLinears; ++i)
                    picked[il][i] = picked[il][i].logical_or((*m)[i]);
        }
        return true;
    };
    int ok = 0;  // the rounds this rank can read back
    while (ok < done && read_all(ok + 1, false)) ++ok;
    at::Tensor least = at::zeros({done + 1}, at::kDouble);  // one-hot, summed: the least ok
    least[ok]        = 1;
    t.allreduce_sum(least)->wait();
    if (across) across->allreduce_sum(least)->wait();
    const int n = int(least.nonzero()[0][0].item<int64_t>());
    picked.assign(like.size(), {});
    for (std::size_t il = 0; il < like.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            picked[il][i] = at::zeros(like[il][i].sizes(), at::kBool);
    for (int k = 1; k <= n; ++k) read_all(k, true);
    return n;
}

}  // namespace rq::store
