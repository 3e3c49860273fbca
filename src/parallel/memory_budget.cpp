// The memory a rank may use (requant/parallel/memory_budget.h).
#include "requant/parallel/memory_budget.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "requant/units.h"

namespace rq::parallel {
namespace {

namespace fs = std::filesystem;

// A whole non-negative decimal number, or nullopt.
std::optional<double> parse_count(const std::string& s) {
    if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos)
        return std::nullopt;
    return std::strtod(s.c_str(), nullptr);
}

std::optional<std::string> read_first_line(const fs::path& p) {
    std::ifstream f(p);
    std::string   line;
    if (!f || !std::getline(f, line)) return std::nullopt;
    return line;
}

std::string per_node(const std::string& what, double bytes, int ranks) {
    return what + " " + gib_text(bytes) + " per node / " + std::to_string(ranks) + " rank" +
           (ranks == 1 ? "" : "s") + " on it";
}

// The smallest limit in `file` from `dir` up to `top` (inclusive); values at or above 2^60
// are "no limit" (cgroup v1 writes 2^63 rounded down to a page).
std::optional<double> smallest_up(fs::path dir, const fs::path& top, const char* file) {
    std::optional<double> best;
    for (;;) {
        if (auto v = read_first_line(dir / file)) {
            const auto n = parse_count(*v);  // "max" (v2) parses to nothing: no limit
            if (n && *n < 1.15e18 && (!best || *n < *best)) best = n;
        }
        if (dir == top || !dir.has_parent_path() || dir.parent_path() == dir) break;
        dir = dir.parent_path();
    }
    return best;
}

// The cgroup path of `controller` ("" for the v2 hierarchy) in /proc/self/cgroup.
std::optional<std::string> cgroup_path(const std::string& root, const std::string& controller) {
    std::ifstream f(root + "/proc/self/cgroup");
    std::string   line;
    while (std::getline(f, line)) {
        const auto a = line.find(':'), b = line.find(':', a + 1);
        if (a == std::string::npos || b == std::string::npos) continue;
        std::stringstream list(line.substr(a + 1, b - a - 1));
        std::string       c;
        bool              match = controller.empty() && b == a + 1;
        while (!match && std::getline(list, c, ',')) match = c == controller;
        if (match) return line.substr(b + 1);
    }
    return std::nullopt;
}

// `mount`/`path` when that folder exists (the process's own cgroup), else the mount itself (a
// container sees its own cgroup as the root of the mount).
std::optional<double> limit_under(const fs::path& mount, const std::string& path, const char* f) {
    if (!fs::is_directory(mount)) return std::nullopt;
    fs::path dir = mount / fs::path(path).relative_path();
    if (!fs::is_directory(dir)) dir = mount;
    return smallest_up(dir, mount, f);
}

void add_per_node(std::vector<MemoryLimit>& out, LimitSource s, const std::string& what,
                  double bytes, int ranks) {
    out.push_back({s, bytes / ranks, per_node(what, bytes, ranks)});
}

double physical_bytes(const std::string& root) {
    std::ifstream f(root + "/proc/meminfo");
    std::string   key, unit;
    double        kib = 0;
    while (f >> key >> kib >> unit)
        if (key == "MemTotal:") return kib * 1024;
    return 0;
}

}  // namespace

const char* name(LimitSource s) {
    switch (s) {
        case LimitSource::RunMemGib:
            return "run.mem_gib";
        case LimitSource::SlurmMemPerNode:
            return "Slurm --mem";
        case LimitSource::SlurmMemPerCpu:
            return "Slurm --mem-per-cpu";
        case LimitSource::Cgroup:
            return "cgroup";
        case LimitSource::Physical:
            return "physical memory";
    }
    return "?";
}

std::map<std::string, std::string> slurm_memory_env() {
    std::map<std::string, std::string> env;
    for (const char* k : {"SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU", "SLURM_CPUS_PER_TASK"})
        if (const char* v = std::getenv(k)) env[k] = v;
    return env;
}

std::optional<double> cgroup_memory_limit(const std::string& root) {
    const fs::path base = root + "/sys/fs/cgroup";
    if (auto p = cgroup_path(root, ""))
        for (const char* m : {"", "unified"})  // v2 alone, or v2 beside v1 (hybrid)
            if (fs::exists(base / m / "cgroup.controllers"))
                if (auto v = limit_under(base / m, *p, "memory.max")) return v;
    if (auto p = cgroup_path(root, "memory"))
        return limit_under(base / "memory", *p, "memory.limit_in_bytes");
    return std::nullopt;
}

std::vector<MemoryLimit> memory_limits(const LimitInputs& in) {
    std::vector<MemoryLimit> out;
    const int                n = std::max(1, in.ranks_on_node);
    if (in.run_mem_gib > 0)
        out.push_back({LimitSource::RunMemGib, in.run_mem_gib * kGiB,
                       "run.mem_gib = " + gib_text(in.run_mem_gib * kGiB) + " per rank"});
    auto env = [&in](const char* k) -> std::optional<double> {
        const auto it = in.env.find(k);
        if (it == in.env.end()) return std::nullopt;
        const auto v = parse_count(it->second);
        if (!v)
            spdlog::warn("{}='{}' is not a whole number; left out of the memory budget", k,
                         it->second);
        return v;
    };
    if (auto mb = env("SLURM_MEM_PER_NODE"); mb && *mb > 0)
        add_per_node(out, LimitSource::SlurmMemPerNode, "Slurm --mem", *mb * kMiB, n);
    if (auto mb = env("SLURM_MEM_PER_CPU"); mb && *mb > 0) {
        const double cpus = std::max(1.0, env("SLURM_CPUS_PER_TASK").value_or(1.0));
        out.push_back({LimitSource::SlurmMemPerCpu, *mb * kMiB * cpus,
                       "Slurm --mem-per-cpu " + gib_text(*mb * kMiB) + " x " +
                           std::to_string(int(cpus)) + " CPU(s) per rank"});
    }
    if (auto c = cgroup_memory_limit(in.root))
        add_per_node(out, LimitSource::Cgroup, "cgroup limit", *c, n);
    if (const double p = physical_bytes(in.root); p > 0)
        add_per_node(out, LimitSource::Physical, "physical memory", p, n);
    return out;
}

double plan_room(const MemoryLimit& l, double startup_bytes) {
    return l.source == LimitSource::RunMemGib ? l.bytes : l.bytes - startup_bytes;
}

std::optional<MemoryLimit> tightest(const std::vector<MemoryLimit>& limits, double startup_bytes) {
    if (limits.empty()) return std::nullopt;
    return *std::min_element(limits.begin(), limits.end(), [&](const auto& a, const auto& b) {
        return plan_room(a, startup_bytes) < plan_room(b, startup_bytes);
    });
}

}  // namespace rq::parallel
