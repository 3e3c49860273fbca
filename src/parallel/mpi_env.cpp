// MPI environment, abort and process facts (requant/parallel/mpi_env.h).
#include "requant/parallel/mpi_env.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdlib>

#include "requant/parallel/mpi_check.h"

namespace rq::parallel {

std::string mpi_error_string(int code) {
    char buf[MPI_MAX_ERROR_STRING];
    int  len = 0;
    if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS)
        return "MPI error " + std::to_string(code);
    return std::string(buf, static_cast<std::size_t>(len));
}

MpiEnv::MpiEnv(int* argc, char*** argv) {
    int provided = 0;
    RQ_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    if (provided < MPI_THREAD_FUNNELED) throw MpiError("MPI does not provide MPI_THREAD_FUNNELED");
    RQ_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    RQ_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN));
    RQ_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    RQ_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
}

MpiEnv::~MpiEnv() {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

bool mpi_initialized() {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}

int world_rank() {
    int r = 0;
    if (mpi_initialized()) MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

void abort_job(int code) {
    if (mpi_initialized()) MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
}

int ranks_on_node() {
    if (!mpi_initialized()) return 1;
    MPI_Comm node;
    RQ_MPI_CHECK(
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    int n = 1;
    RQ_MPI_CHECK(MPI_Comm_size(node, &n));
    RQ_MPI_CHECK(MPI_Comm_free(&node));
    return n;
}

std::string host_name() {
    char buf[256] = {0};
    ::gethostname(buf, sizeof(buf) - 1);
    return buf;
}

}  // namespace rq::parallel
