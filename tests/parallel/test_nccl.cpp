// The NCCL transport. Compiled wherever NCCL and the CUDA runtime are found; its device tests
// need a CUDA-enabled libtorch and a GPU and skip, visibly and in this binary only, without
// them (ctest reports this binary as skipped through SKIP_REGULAR_EXPRESSION).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "requant/error.h"
#include "requant/parallel/mpi_env.h"
#include "requant/parallel/transport.h"

namespace rq::parallel {
namespace {

TEST(Nccl, CompiledInWhenConfigured) {
#ifdef RQ_EXPECT_NCCL
    EXPECT_TRUE(nccl_compiled_in());
#else
    EXPECT_FALSE(nccl_compiled_in());
#endif
}

TEST(Nccl, WithoutAUsableDeviceTheErrorIsClear) {
    if (at::hasCUDA()) GTEST_SKIP() << "a CUDA device is present";
    try {
        make_nccl_transport(0);
        FAIL() << "expected NcclError";
    } catch (const NcclError& e) {
        std::printf("NcclError: %s\n", e.what());
        SUCCEED();
    }
}

TEST(Nccl, OneRankBroadcastAndAllreduceOnDevice) {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA in this libtorch / no GPU: device test skipped";
    auto       t = make_nccl_transport(0);
    at::Tensor x = at::arange(16, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
    t->broadcast(x, 0)->wait();
    t->allreduce_sum(x)->wait();
    EXPECT_TRUE(at::equal(x.cpu(), at::arange(16, at::kFloat)));
}

}  // namespace
}  // namespace rq::parallel

int main(int argc, char** argv) {
    rq::parallel::MpiEnv env(&argc, &argv);  // the NCCL unique id travels over MPI
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
