#pragma once
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "requant/io/job.h"

// The data plane: point-to-point tensor messages between pipeline stages plus the few
// collectives the pipeline needs, behind one interface with run-time chosen backends (modelled
// on c10d's Backend/ProcessGroup). Backends: "mpi" (CPU tensors; always built) and "nccl"
// (CUDA tensors; built when NCCL and the CUDA runtime are found).
//
// Contract for every backend:
// - Calls must be issued in the same order on all participating ranks (collectives) and
//   matched by (peer, tag) for point-to-point; messages between a pair with the same tag are
//   delivered in order.
// - Tensors must be contiguous. A tensor passed to an operation must stay alive and unchanged
//   (send) or untouched (recv) until its Work's wait() returns; the Work keeps a reference.
// - Only the thread that called MPI_Init may call into the MPI backend (MPI_THREAD_FUNNELED).
// - Failures throw MpiError / NcclError with file:line and the library's error string.

namespace rq::parallel {

class Work {
  public:
    virtual ~Work() = default;
    // Blocks until the operation has completed locally (send buffer reusable / recv data
    // arrived). Throws on failure. Idempotent.
    virtual void wait() = 0;
    // Non-blocking completion test. Throws on failure.
    virtual bool is_completed() = 0;
};

// What a transport has moved so far (this process): bytes of tensors sent point to point and
// of tensors it summed over ranks (allreduce_sum, this rank's contribution), the sums' count
// and the seconds spent in them.
struct Traffic {
    int64_t sent_bytes = 0, reduced_bytes = 0, reductions = 0;
    double  reduce_s = 0;
};

class Transport {
  public:
    virtual ~Transport()             = default;
    virtual const char* name() const = 0;  // "mpi" | "nccl"
    virtual int         rank() const = 0;
    virtual int         size() const = 0;

    // Non-blocking send of `t` to rank `dst`.
    virtual std::unique_ptr<Work> send(const at::Tensor& t, int dst, int tag);
    // Non-blocking receive into the preallocated `t` (its shape and dtype must match the send).
    virtual std::unique_ptr<Work> recv(at::Tensor& t, int src, int tag);
    // Collective: `t` on every rank becomes root's `t`.
    virtual std::unique_ptr<Work> broadcast(at::Tensor& t, int root);
    // Collective: elementwise sum over ranks, in place, in rank order (deterministic).
    virtual std::unique_ptr<Work> allreduce_sum(at::Tensor& t);
    // Collective: returns once every rank has entered.
    virtual std::unique_ptr<Work> barrier();

    const Traffic& traffic() const { return traffic_; }

  protected:
    Traffic traffic_;
};

// "mpi" over MPI_COMM_WORLD (or MPI_COMM_SELF when `self_only`: a one-rank pipeline inside a
// larger job, used by tests as the P = 1 reference). MPI must be initialised.
std::unique_ptr<Transport> make_mpi_transport(bool self_only = false);
// "mpi" over the ranks of MPI_COMM_WORLD that pass the same `color`, ranked by `key`
// (MPI_Comm_split): one replica's pipeline, or one stage's replicas. Collective over the world.
std::unique_ptr<Transport> make_mpi_group_transport(int color, int key);
// "nccl" over the ranks of MPI_COMM_WORLD (the unique id travels over MPI), on CUDA device
// `device`, or (device < 0) on the rank's index among the ranks of its node modulo the node's
// devices. Throws NcclError when NCCL is not compiled in or no device is usable.
std::unique_ptr<Transport> make_nccl_transport(int device);
// The job's backend (run.transport); nccl on the rank's own device of its node.
std::unique_ptr<Transport> make_transport(io::TransportKind kind);

bool nccl_compiled_in();

// Root's tensor on every rank: the shape travels first, then the data (collective). `t` is
// ignored off root; `dtype` must be the dtype of root's tensor.
at::Tensor broadcast_tensor(Transport& t, const at::Tensor& root_tensor, int root,
                            at::ScalarType dtype);

}  // namespace rq::parallel
