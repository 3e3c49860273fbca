#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

// The memory a rank may use, read before any weight is loaded so that a job that cannot fit is
// refused in seconds rather than OOM-killed hours later. Every limit is turned into bytes per
// rank; the tightest one is the rank's budget:
//   run.mem_gib        the job's own per-rank budget
//   Slurm --mem        SLURM_MEM_PER_NODE (MiB), divided by the ranks on this node
//   Slurm --mem-per-cpu SLURM_MEM_PER_CPU (MiB) x SLURM_CPUS_PER_TASK (default 1) per rank
//   cgroup             memory.max (v2) or memory.limit_in_bytes (v1) of this process's cgroup
//                      and its ancestors, divided by the ranks on this node
//   physical           MemTotal of /proc/meminfo, divided by the ranks on this node
// phases::prepare compares the room it leaves with the `plan` model's peak
// (parallel/memory_plan.h).

namespace rq::parallel {

enum class LimitSource { RunMemGib, SlurmMemPerNode, SlurmMemPerCpu, Cgroup, Physical };
const char* name(LimitSource s);

struct MemoryLimit {
    LimitSource source = LimitSource::Physical;
    double      bytes  = 0;  // per rank
    std::string detail;      // where it comes from, e.g. "Slurm --mem 8.00 GiB per node / 4 ranks"
};

// What the limits are read from. `root` prefixes /proc and /sys ("" on a real system; tests
// pass a folder holding a fake tree); `env` holds the SLURM_* variables that are set.
struct LimitInputs {
    double                             run_mem_gib   = 0;
    int                                ranks_on_node = 1;
    std::map<std::string, std::string> env;
    std::string                        root;
};

// The SLURM_* variables above, from this process's environment.
std::map<std::string, std::string> slurm_memory_env();
// Every limit that applies, in the order listed above. A variable or file that does not parse
// is left out with a warning (a limit that cannot be read must not stop a run).
std::vector<MemoryLimit> memory_limits(const LimitInputs& in);
// The bytes the `plan` estimate may use under `l`, given what the process already holds at
// start-up (libraries, MPI: the plan leaves them out): run.mem_gib budgets the plan alone, the
// other limits bound the whole process.
double plan_room(const MemoryLimit& l, double startup_bytes);
// The limit that leaves the plan the least room; nullopt when there is none.
std::optional<MemoryLimit> tightest(const std::vector<MemoryLimit>& limits, double startup_bytes);
// The memory cgroup limit of this process in bytes (the smallest along its cgroup path, v2
// first, then v1); nullopt when unlimited or when there is no memory cgroup.
std::optional<double> cgroup_memory_limit(const std::string& root);

}  // namespace rq::parallel
