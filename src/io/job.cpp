// Job files (requant/io/job.h): TOML text -> schema check -> overrides -> typed, validated Job,
// and back to normalised TOML. Nothing here opens models or data; paths are only resolved.
#include "requant/io/job.h"

#include "requant/io/regex.h"

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iomanip>
#include <sstream>
#include <tuple>
#include <utility>

#include <toml++/toml.h>

#include "requant/error.h"

namespace rq::io {
namespace {

namespace fs = std::filesystem;

// Every table and key a job file may hold, in job_to_toml order.
const std::vector<std::pair<std::string, std::vector<std::string>>> kSchema = {
    {"model", {"path"}},
    {"data", {"calibration", "calibration_seqs", "seq_len", "eval", "eval_max_seqs"}},
    {"quant",
     {"method", "bits", "group_size", "sequential", "damp", "act_order", "block_size",
      "static_groups", "true_sequential", "awq_grid", "awq_samples", "awq_loss", "kmeans_iters",
      "kmeans_init", "kmeans_seed", "qtip_code", "qtip_seed"}},
    {"requant",
     {"outlier_ratio", "outlier_select", "outlier_candidates", "significant_ratio", "step_ratio",
      "scope", "significant_select", "signed_ranking", "holdout"}},
    {"sensitivity", {"nodes", "rule", "study", "lambdas", "hvp_eps"}},
    {"run",
     {"out", "microbatch", "threads", "transport", "mem_gib", "replicas", "mem_check",
      "rank_timeout"}},
};

const std::vector<std::string>* schema_keys(const std::string& section) {
    for (const auto& [name, keys] : kSchema)
        if (name == section) return &keys;
    return nullptr;
}

bool known_key(const std::string& section, const std::string& key) {
    const auto* keys = schema_keys(section);
    if (!keys) return false;
    for (const auto& k : *keys)
        if (k == key) return true;
    return false;
}

std::string type_name(const toml::node& n) {
    std::ostringstream os;
    os << n.type();  // "string", "integer", "floating-point", "boolean", "array", "table", ...
    return os.str();
}

// Unknown tables and keys are errors: a typo must not be silently ignored.
void check_schema(const toml::table& root, const std::string& origin) {
    for (const auto& [section, node] : root) {
        const std::string s(section.str());
        if (!schema_keys(s)) {
            throw ConfigError(origin + ": unknown " + (node.is_table() ? "table" : "key") + " '" +
                              s + "'");
        }
        if (!node.is_table())
            throw ConfigError(origin + ": '" + s + "' must be a table, got " + type_name(node));
        for (const auto& [key, value] : *node.as_table())
            if (!known_key(s, std::string(key.str())))
                throw ConfigError(origin + ": unknown key '" + s + "." + std::string(key.str()) +
                                  "'");
    }
}

std::string trim(const std::string& s) {
    const auto b = s.find_first_not_of(" \t\r\n");
    const auto e = s.find_last_not_of(" \t\r\n");
    return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// One "--set section.key=value" applied to the parsed file. The value is parsed as a TOML value;
// text that is not one (a bare word such as gptq) is taken as a string.
void apply_override(toml::table& root, const std::string& set, const std::string& origin) {
    if (const auto bad = invalid_utf8_at(set); bad != std::string::npos)  // TOML is UTF-8
        throw ConfigError(origin + ": --set argument is not valid UTF-8 at byte " +
                          std::to_string(bad));
    const std::string where = origin + ": --set " + set + ": ";
    const auto        eq    = set.find('=');
    const std::string key   = trim(set.substr(0, eq));
    const auto        dot   = key.find('.');
    if (eq == std::string::npos || dot == std::string::npos || key.find('.', dot + 1) != key.npos)
        throw ConfigError(where + "expected section.key=value");
    const std::string section = key.substr(0, dot), name = key.substr(dot + 1);
    if (!known_key(section, name))
        throw ConfigError(origin + ": unknown key '" + key + "' (--set " + set + ")");
    const std::string text = trim(set.substr(eq + 1));

    toml::table parsed;
    try {
        parsed = toml::parse("v = " + text);
    } catch (const toml::parse_error&) {
        parsed = toml::table{};
    }
    toml::node* table_node = root.get(section);
    if (!table_node) table_node = &root.insert_or_assign(section, toml::table{}).first->second;
    toml::table* table = table_node->as_table();  // check_schema has made sure it is one
    if (parsed.size() == 1 && parsed.get("v"))
        table->insert_or_assign(name, *parsed.get("v"));
    else
        table->insert_or_assign(name, text);
}

// Typed reads from the checked table; errors name the file and the dotted key.
struct Reader {
    const toml::table& root;
    const std::string& origin;

    [[noreturn]] void fail(const std::string& key, const std::string& what) const {
        throw ConfigError(origin + ": '" + key + "' " + what);
    }
    const toml::node* find(const char* section, const char* key) const {
        const toml::table* t = root.get_as<toml::table>(section);
        return t ? t->get(key) : nullptr;
    }
    // Each read leaves `out` alone and returns false when the key is absent.
    bool read(const char* section, const char* key, int& out) const {
        const toml::node* n = find(section, key);
        if (!n) return false;
        if (!n->is_integer())
            fail(dotted(section, key), "must be an integer, got " + type_name(*n));
        const int64_t v = n->as_integer()->get();
        if (v < INT_MIN || v > INT_MAX)
            fail(dotted(section, key), "is out of range: " + std::to_string(v));
        out = static_cast<int>(v);
        return true;
    }
    bool read(const char* section, const char* key, double& out) const {
        const toml::node* n = find(section, key);
        if (!n) return false;
        if (n->is_integer())
            out = static_cast<double>(n->as_integer()->get());
        else if (n->is_floating_point())
            out = n->as_floating_point()->get();
        else
            fail(dotted(section, key), "must be a number, got " + type_name(*n));
        return true;
    }
    bool read(const char* section, const char* key, bool& out) const {
        const toml::node* n = find(section, key);
        if (!n) return false;
        if (!n->is_boolean())
            fail(dotted(section, key), "must be true or false, got " + type_name(*n));
        out = n->as_boolean()->get();
        return true;
    }
    bool read(const char* section, const char* key, std::string& out) const {
        const toml::node* n = find(section, key);
        if (!n) return false;
        if (!n->is_string()) fail(dotted(section, key), "must be a string, got " + type_name(*n));
        out = n->as_string()->get();
        return true;
    }
    bool read(const char* section, const char* key, std::vector<std::string>& out) const {
        const toml::node* n = find(section, key);
        if (!n) return false;
        if (!n->is_array())
            fail(dotted(section, key), "must be an array of strings, got " + type_name(*n));
        out.clear();
        for (const auto& e : *n->as_array()) {
            if (!e.is_string())
                fail(dotted(section, key),
                     "must be an array of strings, got an element of type " + type_name(e));
            out.push_back(e.as_string()->get());
        }
        return true;
    }
    bool read(const char* section, const char* key, std::vector<double>& out) const {
        const toml::node* n = find(section, key);
        if (!n) return false;
        if (!n->is_array())
            fail(dotted(section, key), "must be an array of numbers, got " + type_name(*n));
        out.clear();
        for (const auto& e : *n->as_array()) {
            if (e.is_integer())
                out.push_back(double(e.as_integer()->get()));
            else if (e.is_floating_point())
                out.push_back(e.as_floating_point()->get());
            else
                fail(dotted(section, key),
                     "must be an array of numbers, got an element of type " + type_name(e));
        }
        return true;
    }
    static std::string dotted(const char* section, const char* key) {
        return std::string(section) + "." + key;
    }
};

// Shortest decimal text that reads back as the same double, always with '.' or an exponent so
// that TOML sees a float.
std::string format_double(double v) {
    char buf[64];
    for (int prec = 15; prec <= 17; ++prec) {
        std::snprintf(buf, sizeof(buf), "%.*g", prec, v);
        if (std::strtod(buf, nullptr) == v) break;
    }
    std::string s(buf);
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
    return s;
}

// ---- value checks ----------------------------------------------------------------------------

void at_least(const Reader& r, const char* key, int v, int lo) {
    if (v < lo) r.fail(key, "must be >= " + std::to_string(lo) + ", got " + std::to_string(v));
}

void in_range(const Reader& r, const char* key, int v, int lo, int hi) {
    if (v < lo || v > hi)
        r.fail(key, "must be in " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " +
                        std::to_string(v));
}

void fraction(const Reader& r, const char* key, double v) {
    if (!(v >= 0.0 && v < 1.0))  // also refuses nan
        r.fail(key, "must be a fraction in [0, 1), got " + format_double(v));
}

// Reads an enum key: its text must be one of `allowed` (names as name(E) spells them).
template <class E>
void read_enum(const Reader& r, const char* section, const char* key, E& v,
               std::initializer_list<E> allowed) {
    std::string text = name(v);
    r.read(section, key, text);
    std::string list;
    for (E a : allowed) {
        if (text == name(a)) {
            v = a;
            return;
        }
        list += (list.empty() ? "" : ", ") + std::string(name(a));
    }
    r.fail(std::string(section) + "." + key, "is '" + text + "'; allowed: " + list);
}

void not_empty(const Reader& r, const char* key, const std::string& v) {
    if (v.empty()) r.fail(key, "must not be empty");
}

std::string resolve(const fs::path& dir, const std::string& p) {
    const fs::path path(p);
    return path.is_absolute() ? p : (dir / path).lexically_normal().string();
}

auto fields(const JobData& d) {
    return std::tie(d.calibration, d.calibration_seqs, d.seq_len, d.eval, d.eval_max_seqs);
}
auto fields(const JobQuant& q) {
    return std::tie(q.method, q.bits, q.group_size, q.sequential, q.damp, q.act_order, q.block_size,
                    q.static_groups, q.awq_grid, q.awq_samples, q.kmeans_iters, q.kmeans_init,
                    q.kmeans_seed, q.qtip_code, q.qtip_seed, q.awq_loss, q.true_sequential);
}
auto fields(const JobRequant& q) {
    return std::tie(q.outlier_ratio, q.outlier_select, q.outlier_candidates, q.significant_ratio,
                    q.step_ratio, q.scope, q.significant_select, q.signed_ranking, q.holdout);
}
auto fields(const JobSensitivity& s) {
    return std::tie(s.nodes, s.rule, s.study, s.lambdas, s.hvp_eps);
}
auto fields(const JobRun& r) {
    return std::tie(r.out, r.microbatch, r.threads, r.transport, r.mem_gib, r.replicas, r.mem_check,
                    r.rank_timeout);
}

}  // namespace

namespace {
template <class E, std::size_t N>
const char* name_of(E v, const char* const (&names)[N]) {
    const auto i = static_cast<std::size_t>(v);
    return i < N ? names[i] : "?";
}
}  // namespace

const char* name(QuantMethod v) {
    return name_of(v, {"rtn", "gptq", "awq", "squeezellm", "qtip"});
}
const char* name(QtipCode v) {
    return name_of(v, {"hyb", "1mad", "3inst"});
}
const char* name(KmeansInit v) {
    return name_of(v, {"kmeans++", "multistart"});
}
const char* name(AwqLoss v) {
    return name_of(v, {"block", "linear"});
}
const char* name(OutlierSelect v) {
    return name_of(v, {"none", "fixed", "adaptive", "random"});
}
const char* name(SignificantSelect v) {
    return name_of(v, {"none", "fisher", "pqi", "random"});
}
const char* name(SelectScope v) {
    return name_of(v, {"global", "linear"});
}
const char* name(PqiRule v) {
    return name_of(v, {"left", "right", "midpoint", "trapezoid"});
}
const char* name(TransportKind v) {
    return name_of(v, {"mpi", "nccl"});
}

bool operator==(const Job& a, const Job& b) {
    return a.model.path == b.model.path && fields(a.data) == fields(b.data) &&
           fields(a.quant) == fields(b.quant) && fields(a.requant) == fields(b.requant) &&
           fields(a.sensitivity) == fields(b.sensitivity) && fields(a.run) == fields(b.run);
}

bool operator!=(const Job& a, const Job& b) {
    return !(a == b);
}

Job load_job(const std::string& path, const std::vector<std::string>& overrides) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw IoError(path + ": cannot open job file: " + errno_string());
    std::error_code ec;
    if (fs::is_directory(path, ec)) throw IoError(path + ": is a folder, not a job file");
    std::ostringstream text;
    text << f.rdbuf();
    if (f.bad()) throw IoError(path + ": cannot read job file: " + errno_string());
    return parse_job(text.str(), path, overrides);
}

namespace {

void read_data(const Reader& r, JobData& d) {
    if (!r.read("data", "calibration", d.calibration)) r.fail("data.calibration", "is required");
    not_empty(r, "data.calibration", d.calibration);
    r.read("data", "calibration_seqs", d.calibration_seqs);
    r.read("data", "seq_len", d.seq_len);
    r.read("data", "eval", d.eval);
    r.read("data", "eval_max_seqs", d.eval_max_seqs);
    at_least(r, "data.calibration_seqs", d.calibration_seqs, 1);
    at_least(r, "data.seq_len", d.seq_len, 2);
    for (const auto& e : d.eval) not_empty(r, "data.eval", e);
    if (d.eval_max_seqs == 0 || d.eval_max_seqs < -1)
        r.fail("data.eval_max_seqs",
               "must be -1 (all) or >= 1, got " + std::to_string(d.eval_max_seqs));
}

void read_quant(const Reader& r, JobQuant& q) {
    read_enum(r, "quant", "method", q.method,
              {QuantMethod::Rtn, QuantMethod::Gptq, QuantMethod::Awq, QuantMethod::SqueezeLlm,
               QuantMethod::Qtip});
    const bool qtip = q.method == QuantMethod::Qtip;
    r.read("quant", "bits", q.bits);
    if (qtip)
        in_range(r, "quant.bits", q.bits, 2, 4);  // K of the trellis
    else
        in_range(r, "quant.bits", q.bits, 2, 8);
    if (qtip) q.group_size = 0;  // tiles and one scale per matrix: no groups
    r.read("quant", "group_size", q.group_size);
    if (qtip && q.group_size != 0)
        r.fail("quant.group_size",
               "does not apply to qtip (one scale per matrix); leave it "
               "out or set 0, got " +
                   std::to_string(q.group_size));
    if (q.group_size < 0 || q.group_size == 1)
        r.fail("quant.group_size",
               "must be 0 (per output channel) or >= 2, got " + std::to_string(q.group_size));
    const bool sequential_set = r.read("quant", "sequential", q.sequential);
    if (!sequential_set)
        q.sequential = (q.method == QuantMethod::Gptq);  // as the reference codes do
    if (qtip && q.sequential)
        r.fail("quant.sequential",
               "must be false for qtip: its Hessian comes from the "
               "full-precision model (PAPER.md §9.3)");
    r.read("quant", "damp", q.damp);
    fraction(r, "quant.damp", q.damp);
    r.read("quant", "act_order", q.act_order);
    r.read("quant", "block_size", q.block_size);
    at_least(r, "quant.block_size", q.block_size, 1);
    r.read("quant", "static_groups", q.static_groups);
    r.read("quant", "true_sequential", q.true_sequential);
    r.read("quant", "awq_grid", q.awq_grid);
    at_least(r, "quant.awq_grid", q.awq_grid, 1);
    r.read("quant", "awq_samples", q.awq_samples);
    at_least(r, "quant.awq_samples", q.awq_samples, 1);
    read_enum(r, "quant", "awq_loss", q.awq_loss, {AwqLoss::Block, AwqLoss::Linear});
    r.read("quant", "kmeans_iters", q.kmeans_iters);
    at_least(r, "quant.kmeans_iters", q.kmeans_iters, 1);
    read_enum(r, "quant", "kmeans_init", q.kmeans_init,
              {KmeansInit::PlusPlus, KmeansInit::Multistart});
    r.read("quant", "kmeans_seed", q.kmeans_seed);
    at_least(r, "quant.kmeans_seed", q.kmeans_seed, 0);
    read_enum(r, "quant", "qtip_code", q.qtip_code,
              {QtipCode::Hyb, QtipCode::OneMad, QtipCode::ThreeInst});
    r.read("quant", "qtip_seed", q.qtip_seed);
    at_least(r, "quant.qtip_seed", q.qtip_seed, 0);
}

void read_requant(const Reader& r, JobRequant& rq) {
    r.read("requant", "outlier_ratio", rq.outlier_ratio);
    fraction(r, "requant.outlier_ratio", rq.outlier_ratio);
    read_enum(r, "requant", "outlier_select", rq.outlier_select,
              {OutlierSelect::Adaptive, OutlierSelect::Fixed, OutlierSelect::Random,
               OutlierSelect::None});
    r.read("requant", "outlier_candidates", rq.outlier_candidates);
    if (rq.outlier_candidates.empty() || rq.outlier_candidates.front() != 0.0)
        r.fail("requant.outlier_candidates", "must start with 0 (the candidate without outliers)");
    for (std::size_t i = 1; i < rq.outlier_candidates.size(); ++i)
        if (!(rq.outlier_candidates[i] > rq.outlier_candidates[i - 1]))
            r.fail("requant.outlier_candidates", "must increase strictly");
    r.read("requant", "significant_ratio", rq.significant_ratio);
    fraction(r, "requant.significant_ratio", rq.significant_ratio);
    r.read("requant", "step_ratio", rq.step_ratio);
    fraction(r, "requant.step_ratio", rq.step_ratio);
    read_enum(r, "requant", "scope", rq.scope, {SelectScope::Global, SelectScope::Linear});
    read_enum(r, "requant", "significant_select", rq.significant_select,
              {SignificantSelect::Pqi, SignificantSelect::Fisher, SignificantSelect::Random});
    r.read("requant", "signed_ranking", rq.signed_ranking);
    r.read("requant", "holdout", rq.holdout);
    fraction(r, "requant.holdout", rq.holdout);
    if (rq.holdout > 0 && rq.significant() != SignificantSelect::Pqi)
        r.fail("requant.holdout", "needs Alg. 2 (significant_select = pqi, significant_ratio > 0)");
    if (rq.step_ratio > rq.significant_ratio)
        r.fail("requant.step_ratio", "must not exceed requant.significant_ratio (" +
                                         format_double(rq.significant_ratio) + "), got " +
                                         format_double(rq.step_ratio));
}

void read_sensitivity(const Reader& r, JobSensitivity& s) {
    r.read("sensitivity", "nodes", s.nodes);
    at_least(r, "sensitivity.nodes", s.nodes, 1);
    read_enum(r, "sensitivity", "rule", s.rule,
              {PqiRule::Left, PqiRule::Right, PqiRule::Midpoint, PqiRule::Trapezoid});
    r.read("sensitivity", "study", s.study);
    r.read("sensitivity", "lambdas", s.lambdas);
    if (s.lambdas.empty()) r.fail("sensitivity.lambdas", "must not be empty");
    for (double l : s.lambdas)
        if (!(l > 0.0 && l <= 1.0))
            r.fail("sensitivity.lambdas", "must lie in (0, 1], got " + format_double(l));
    r.read("sensitivity", "hvp_eps", s.hvp_eps);
    if (!(s.hvp_eps > 0.0 && s.hvp_eps < 1.0))
        r.fail("sensitivity.hvp_eps", "must lie in (0, 1), got " + format_double(s.hvp_eps));
}

// `stem`: the job file's stem, for the default run.out.
void read_run(const Reader& r, JobRun& run, const std::string& stem) {
    run.out = "runs/" + stem;
    r.read("run", "out", run.out);
    not_empty(r, "run.out", run.out);
    r.read("run", "microbatch", run.microbatch);
    at_least(r, "run.microbatch", run.microbatch, 1);
    r.read("run", "threads", run.threads);
    at_least(r, "run.threads", run.threads, 1);
    read_enum(r, "run", "transport", run.transport, {TransportKind::Mpi, TransportKind::Nccl});
    r.read("run", "mem_gib", run.mem_gib);
    if (!(run.mem_gib >= 0.0 && run.mem_gib < 1e7))
        r.fail("run.mem_gib",
               "must be a size in GiB >= 0 (0: no budget), got " + format_double(run.mem_gib));
    r.read("run", "replicas", run.replicas);
    at_least(r, "run.replicas", run.replicas, 1);
    r.read("run", "mem_check", run.mem_check);
    r.read("run", "rank_timeout", run.rank_timeout);
    if (!(run.rank_timeout == 0 || (run.rank_timeout >= 1 && run.rank_timeout < 1e7)))
        r.fail("run.rank_timeout",
               "must be seconds >= 1, or 0 (never), got " + format_double(run.rank_timeout));
}

}  // namespace

Job parse_job(const std::string& toml_text, const std::string& origin_path,
              const std::vector<std::string>& overrides) {
    const std::string& origin = origin_path;
    toml::table        root;
    try {
        root = toml::parse(toml_text, origin_path);
    } catch (const toml::parse_error& e) {
        throw FormatError(origin + ":" + std::to_string(e.source().begin.line) + ":" +
                          std::to_string(e.source().begin.column) +
                          ": not valid TOML: " + std::string(e.description()));
    }
    check_schema(root, origin);
    for (const auto& set : overrides) apply_override(root, set, origin);

    const Reader r{root, origin};
    Job          j;
    if (!r.read("model", "path", j.model.path)) r.fail("model.path", "is required");
    not_empty(r, "model.path", j.model.path);

    read_data(r, j.data);
    read_quant(r, j.quant);
    read_requant(r, j.requant);
    read_sensitivity(r, j.sensitivity);
    const fs::path origin_fs(origin_path);
    read_run(r, j.run, origin_fs.stem().string());

    // Relative paths are relative to the job file's folder, not to the working directory.
    const fs::path dir = fs::absolute(origin_fs).parent_path();
    j.model.path       = resolve(dir, j.model.path);
    j.data.calibration = resolve(dir, j.data.calibration);
    for (auto& e : j.data.eval) e = resolve(dir, e);
    j.run.out = resolve(dir, j.run.out);
    return j;
}

std::string job_to_toml(const Job& j) {
    std::ostringstream os;
    const auto         put = [&os](const char* key, const auto& value) {
        os << std::left << std::setw(18) << key << " = " << value << '\n';
    };
    const auto str  = [](const std::string& s) { return toml::value<std::string>(s); };
    const auto num  = [](int v) { return toml::value<int64_t>(v); };
    const auto flag = [](bool v) { return v ? "true" : "false"; };
    const auto list = [](const std::vector<double>& v) {
        std::string s = "[";
        for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + format_double(v[i]);
        return s + "]";
    };

    os << "# requant-dist job, normalised: every key, paths absolute, defaults resolved.\n";
    os << "\n[model]\n";
    put("path", str(j.model.path));
    os << "\n[data]\n";
    put("calibration", str(j.data.calibration));
    put("calibration_seqs", num(j.data.calibration_seqs));
    put("seq_len", num(j.data.seq_len));
    toml::array eval;
    for (const auto& e : j.data.eval) eval.push_back(e);
    put("eval", eval);
    put("eval_max_seqs", num(j.data.eval_max_seqs));
    os << "\n[quant]\n";
    put("method", str(name(j.quant.method)));
    put("bits", num(j.quant.bits));
    put("group_size", num(j.quant.group_size));
    put("sequential", flag(j.quant.sequential));
    put("damp", format_double(j.quant.damp));
    put("act_order", flag(j.quant.act_order));
    put("block_size", num(j.quant.block_size));
    put("static_groups", flag(j.quant.static_groups));
    put("true_sequential", flag(j.quant.true_sequential));
    put("awq_grid", num(j.quant.awq_grid));
    put("awq_samples", num(j.quant.awq_samples));
    put("awq_loss", str(name(j.quant.awq_loss)));
    put("kmeans_iters", num(j.quant.kmeans_iters));
    put("kmeans_init", str(name(j.quant.kmeans_init)));
    put("kmeans_seed", num(j.quant.kmeans_seed));
    put("qtip_code", str(name(j.quant.qtip_code)));
    put("qtip_seed", num(j.quant.qtip_seed));
    os << "\n[requant]\n";
    put("outlier_ratio", format_double(j.requant.outlier_ratio));
    put("outlier_select", str(name(j.requant.outlier_select)));
    put("outlier_candidates", list(j.requant.outlier_candidates));
    put("significant_ratio", format_double(j.requant.significant_ratio));
    put("step_ratio", format_double(j.requant.step_ratio));
    put("scope", str(name(j.requant.scope)));
    put("significant_select", str(name(j.requant.significant_select)));
    put("signed_ranking", flag(j.requant.signed_ranking));
    put("holdout", format_double(j.requant.holdout));
    os << "\n[sensitivity]\n";
    put("nodes", num(j.sensitivity.nodes));
    put("rule", str(name(j.sensitivity.rule)));
    put("study", flag(j.sensitivity.study));
    put("lambdas", list(j.sensitivity.lambdas));
    put("hvp_eps", format_double(j.sensitivity.hvp_eps));
    os << "\n[run]\n";
    put("out", str(j.run.out));
    put("microbatch", num(j.run.microbatch));
    put("threads", num(j.run.threads));
    put("transport", str(name(j.run.transport)));
    put("mem_gib", format_double(j.run.mem_gib));
    put("replicas", num(j.run.replicas));
    put("mem_check", flag(j.run.mem_check));
    put("rank_timeout", format_double(j.run.rank_timeout));
    return os.str();
}

}  // namespace rq::io
