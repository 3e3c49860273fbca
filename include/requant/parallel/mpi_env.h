#pragma once
#include <cstdint>
#include <string>

// The MPI process environment: initialisation (MPI_THREAD_FUNNELED, errors returned rather
// than fatal so they become MpiError), rank facts, and the job-wide abort used when any rank
// fails. No header of the project includes mpi.h; this is the front door.

namespace rq::parallel {

class MpiEnv {
  public:
    MpiEnv(int* argc, char*** argv);  // MPI_Init_thread; throws MpiError
    ~MpiEnv();                        // MPI_Finalize
    MpiEnv(const MpiEnv&)            = delete;
    MpiEnv& operator=(const MpiEnv&) = delete;
    int     rank() const { return rank_; }
    int     size() const { return size_; }

  private:
    int rank_ = 0, size_ = 1;
};

bool mpi_initialized();
int  world_rank();  // 0 when MPI is not initialised
// Ends every rank of the job (MPI_Abort on MPI_COMM_WORLD); never returns.
[[noreturn]] void abort_job(int code);

// The ranks of MPI_COMM_WORLD on this node (MPI_COMM_TYPE_SHARED), this one included; 1
// without MPI. Collective.
int         ranks_on_node();
std::string host_name();

}  // namespace rq::parallel
