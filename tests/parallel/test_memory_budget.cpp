// The memory a rank may use (requant/parallel/memory_budget.h), read from fake /proc and /sys
// trees: cgroup v1 and v2 limits along the cgroup path (the smallest wins, "max" and v1's
// near-2^63 are no limit, a container's own root is used when the path is not under the
// mount), Slurm's per-node and per-CPU variables, physical memory, the division by the ranks
// on the node, malformed values left out, and the tightest limit chosen.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "requant/parallel/memory_budget.h"
#include "requant/units.h"

namespace rq::parallel {
namespace {

namespace fs = std::filesystem;

class FakeRoot : public ::testing::Test {
  protected:
    void SetUp() override {
        root = fs::temp_directory_path() /
               ("rq-budget-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(root);
        put("proc/meminfo", "MemTotal:       16384000 kB\nMemFree:         1000 kB\n");
    }
    void TearDown() override { fs::remove_all(root); }
    void put(const std::string& rel, const std::string& text) {
        fs::create_directories((root / rel).parent_path());
        std::ofstream(root / rel) << text;
    }
    LimitInputs inputs(int ranks = 1) const { return {0, ranks, {}, root.string()}; }
    fs::path    root;
};

const double kMemTotal = 16384000.0 * 1024;

TEST_F(FakeRoot, CgroupV1SmallestAlongThePath) {
    put("proc/self/cgroup", "5:cpu,cpuacct:/job\n4:memory:/slurm/job_7/step_0\n0::/\n");
    put("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
    put("sys/fs/cgroup/memory/slurm/memory.limit_in_bytes", "9223372036854771712\n");
    put("sys/fs/cgroup/memory/slurm/job_7/memory.limit_in_bytes", "8589934592\n");
    put("sys/fs/cgroup/memory/slurm/job_7/step_0/memory.limit_in_bytes", "17179869184\n");
    ASSERT_TRUE(cgroup_memory_limit(root.string()).has_value());
    EXPECT_EQ(*cgroup_memory_limit(root.string()), 8589934592.0);
}

TEST_F(FakeRoot, CgroupV1UnlimitedIsNoLimit) {
    put("proc/self/cgroup", "4:memory:/a\n");
    put("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
    put("sys/fs/cgroup/memory/a/memory.limit_in_bytes", "9223372036854771712\n");
    EXPECT_FALSE(cgroup_memory_limit(root.string()).has_value());
}

TEST_F(FakeRoot, CgroupV2MaxAndNumbers) {
    put("proc/self/cgroup", "0::/user.slice/job\n");
    put("sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
    put("sys/fs/cgroup/user.slice/memory.max", "4294967296\n");
    put("sys/fs/cgroup/user.slice/job/memory.max", "max\n");
    EXPECT_EQ(cgroup_memory_limit(root.string()).value_or(0), 4294967296.0);
    put("sys/fs/cgroup/user.slice/memory.max", "max\n");
    EXPECT_FALSE(cgroup_memory_limit(root.string()).has_value());
}

TEST_F(FakeRoot, CgroupV2BesideV1IsRead) {  // hybrid: v2 under /sys/fs/cgroup/unified
    put("proc/self/cgroup", "4:memory:/\n0::/box\n");
    put("sys/fs/cgroup/unified/cgroup.controllers", "memory\n");
    put("sys/fs/cgroup/unified/box/memory.max", "1073741824\n");
    EXPECT_EQ(cgroup_memory_limit(root.string()).value_or(0), 1073741824.0);
}

TEST_F(FakeRoot, ContainerSeesItsCgroupAtTheMountRoot) {
    put("proc/self/cgroup", "4:memory:/docker/abc\n");  // not a folder under the mount
    put("sys/fs/cgroup/memory/memory.limit_in_bytes", "2147483648\n");
    EXPECT_EQ(cgroup_memory_limit(root.string()).value_or(0), 2147483648.0);
}

TEST_F(FakeRoot, NoCgroupFileMeansNoLimit) {
    EXPECT_FALSE(cgroup_memory_limit(root.string()).has_value());
}

TEST_F(FakeRoot, PhysicalMemoryDividedByRanksOnTheNode) {
    const auto limits = memory_limits(inputs(4));
    ASSERT_EQ(limits.size(), 1u);
    EXPECT_EQ(limits[0].source, LimitSource::Physical);
    EXPECT_DOUBLE_EQ(limits[0].bytes, kMemTotal / 4);
    EXPECT_NE(limits[0].detail.find("4 ranks"), std::string::npos) << limits[0].detail;
}

TEST_F(FakeRoot, SlurmPerNodeAndPerCpu) {
    LimitInputs in = inputs(2);
    in.env         = {{"SLURM_MEM_PER_NODE", "8192"}};
    auto limits    = memory_limits(in);
    ASSERT_EQ(limits.size(), 2u);
    EXPECT_EQ(limits[0].source, LimitSource::SlurmMemPerNode);
    EXPECT_DOUBLE_EQ(limits[0].bytes, 4.0 * kGiB);
    in.env = {{"SLURM_MEM_PER_CPU", "1024"}, {"SLURM_CPUS_PER_TASK", "3"}};
    limits = memory_limits(in);
    ASSERT_EQ(limits.size(), 2u);
    EXPECT_EQ(limits[0].source, LimitSource::SlurmMemPerCpu);
    EXPECT_DOUBLE_EQ(limits[0].bytes, 3.0 * kGiB);  // per rank: not divided by the node's ranks
}

TEST_F(FakeRoot, MalformedValuesAreLeftOut) {
    LimitInputs in = inputs(1);
    in.env         = {{"SLURM_MEM_PER_NODE", "8G"}, {"SLURM_MEM_PER_CPU", "-5"}};
    put("proc/self/cgroup", "4:memory:/\n");
    put("sys/fs/cgroup/memory/memory.limit_in_bytes", "lots\n");
    const auto limits = memory_limits(in);
    ASSERT_EQ(limits.size(), 1u);
    EXPECT_EQ(limits[0].source, LimitSource::Physical);
}

TEST_F(FakeRoot, TightestOfAll) {
    put("proc/self/cgroup", "4:memory:/\n");
    put("sys/fs/cgroup/memory/memory.limit_in_bytes", "6442450944\n");  // 6 GiB per node
    LimitInputs in = inputs(2);
    in.env         = {{"SLURM_MEM_PER_NODE", "16384"}};  // 8 GiB per rank
    in.run_mem_gib = 5;
    auto t         = tightest(memory_limits(in), 0);
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->source, LimitSource::Cgroup);  // 6 / 2 = 3 GiB per rank
    EXPECT_DOUBLE_EQ(t->bytes, 3.0 * kGiB);
    in.run_mem_gib = 2;
    EXPECT_EQ(tightest(memory_limits(in), 0)->source, LimitSource::RunMemGib);
    EXPECT_FALSE(tightest({}, 0).has_value());
}

// run.mem_gib budgets the plan alone; every other limit also holds what the process had at
// start-up, which the plan leaves out.
TEST_F(FakeRoot, StartupMemoryCountsAgainstOuterLimitsOnly) {
    LimitInputs in    = inputs(1);
    in.env            = {{"SLURM_MEM_PER_NODE", "3072"}};  // 3 GiB
    in.run_mem_gib    = 2.5;
    const auto limits = memory_limits(in);
    EXPECT_EQ(tightest(limits, 0.25 * kGiB)->source, LimitSource::RunMemGib);        // 2.5 < 2.75
    EXPECT_EQ(tightest(limits, 0.75 * kGiB)->source, LimitSource::SlurmMemPerNode);  // 2.25
    EXPECT_DOUBLE_EQ(plan_room(limits[0], kGiB), 2.5 * kGiB);
    EXPECT_DOUBLE_EQ(plan_room(limits[1], kGiB), 2.0 * kGiB);
}

}  // namespace
}  // namespace rq::parallel
