// main() for MPI GoogleTest binaries: MPI up, tests run on every rank, only rank 0 prints, and
// the exit code is the maximum over ranks so a failure on any rank fails ctest.
#include <gtest/gtest.h>
#include <mpi.h>

#include "requant/cli/sysinfo.h"
#include "requant/parallel/mpi_env.h"

int main(int argc, char** argv) {
    rq::parallel::MpiEnv env(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);
    rq::cli::set_threads(1);  // oversubscribed ranks; every comparison uses the same count
    if (env.rank() != 0) {
        auto& l = ::testing::UnitTest::GetInstance()->listeners();
        delete l.Release(l.default_result_printer());
    }
    int rc = RUN_ALL_TESTS(), grc = 0;
    MPI_Allreduce(&rc, &grc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return grc;
}
