// NCCL backend of the data plane (requant/parallel/transport.h): CUDA tensors, one communicator
// over the ranks of MPI_COMM_WORLD (the unique id is broadcast over MPI), one CUDA stream per
// transport. Raw device pointers at the NCCL boundary, so this translation unit compiles and
// links against any libtorch; it runs where libtorch has CUDA and a GPU is present.
#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include "requant/error.h"
#include "requant/parallel/mpi_check.h"
#include "requant/parallel/transport.h"

#define RQ_CUDA_CHECK(call)                                                                       \
    do {                                                                                          \
        const cudaError_t rq_e_ = (call);                                                         \
        if (rq_e_ != cudaSuccess)                                                                 \
            throw ::rq::NcclError(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                                  #call + " failed: " + cudaGetErrorString(rq_e_));               \
    } while (0)

#define RQ_NCCL_CHECK(call)                                                                       \
    do {                                                                                          \
        const ncclResult_t rq_r_ = (call);                                                        \
        if (rq_r_ != ncclSuccess)                                                                 \
            throw ::rq::NcclError(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                                  #call + " failed: " + ncclGetErrorString(rq_r_) +               \
                                  " (last: " + ncclGetLastError(nullptr) + ")");                  \
    } while (0)

namespace rq::parallel {
namespace {

ncclDataType_t nccl_type(const at::Tensor& t) {
    switch (t.scalar_type()) {
        case at::kFloat:
            return ncclFloat32;
        case at::kDouble:
            return ncclFloat64;
        case at::kHalf:
            return ncclFloat16;
        case at::kBFloat16:
            return ncclBfloat16;
        case at::kLong:
            return ncclInt64;
        case at::kInt:
            return ncclInt32;
        case at::kByte:
        case at::kBool:
            return ncclUint8;
        default:
            throw NcclError(std::string("NCCL transport: unsupported dtype ") +
                            at::toString(t.scalar_type()));
    }
}

void check_tensor(const at::Tensor& t, const char* op) {
    if (!t.defined() || !t.is_contiguous() || !t.device().is_cuda())
        throw NcclError(std::string("NCCL transport ") + op +
                        ": tensor must be a defined, contiguous CUDA tensor");
}

// Completion of the operations enqueued on the transport's stream up to its creation.
class CudaWork : public Work {
  public:
    CudaWork(cudaStream_t s, at::Tensor keep) : keep_(std::move(keep)) {
        RQ_CUDA_CHECK(cudaEventCreateWithFlags(&ev_, cudaEventDisableTiming));
        RQ_CUDA_CHECK(cudaEventRecord(ev_, s));
    }
    ~CudaWork() override {
        cudaEventSynchronize(ev_);
        cudaEventDestroy(ev_);
    }
    void wait() override { RQ_CUDA_CHECK(cudaEventSynchronize(ev_)); }
    bool is_completed() override {
        const cudaError_t e = cudaEventQuery(ev_);
        if (e == cudaErrorNotReady) return false;
        RQ_CUDA_CHECK(e);
        return true;
    }

  private:
    cudaEvent_t ev_{};
    at::Tensor  keep_;
};

// This rank's GPU: its rank among the ranks of its node (MPI_COMM_TYPE_SHARED), modulo the
// devices the node has, so that ranks on one node use different GPUs.
int local_device() {
    MPI_Comm node;
    RQ_MPI_CHECK(
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    int local = 0, n_dev = 0;
    RQ_MPI_CHECK(MPI_Comm_rank(node, &local));
    RQ_MPI_CHECK(MPI_Comm_free(&node));
    RQ_CUDA_CHECK(cudaGetDeviceCount(&n_dev));
    if (n_dev < 1) throw NcclError("no CUDA device on this node");
    return local % n_dev;
}

class NcclTransport : public Transport {
  public:
    explicit NcclTransport(int device) {
        RQ_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
        RQ_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
        if (device < 0) device = local_device();
        RQ_CUDA_CHECK(cudaSetDevice(device));
        ncclUniqueId id;
        if (rank_ == 0) RQ_NCCL_CHECK(ncclGetUniqueId(&id));
        RQ_MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD));
        RQ_NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
        RQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    }
    ~NcclTransport() override {
        cudaStreamSynchronize(stream_);
        ncclCommDestroy(comm_);
        cudaStreamDestroy(stream_);
    }
    const char* name() const override { return "nccl"; }
    int         rank() const override { return rank_; }
    int         size() const override { return size_; }

    // NCCL matches point-to-point calls by order per peer, not by tag: the tag is unused, the
    // ordering contract of Transport makes that equivalent.
    std::unique_ptr<Work> send(const at::Tensor& t, int dst, int /*tag*/) override {
        check_tensor(t, "send");
        traffic_.sent_bytes += int64_t(t.nbytes());
        RQ_NCCL_CHECK(ncclSend(t.data_ptr(), size_t(t.numel()), nccl_type(t), dst, comm_, stream_));
        return std::make_unique<CudaWork>(stream_, t);
    }
    std::unique_ptr<Work> recv(at::Tensor& t, int src, int /*tag*/) override {
        check_tensor(t, "recv");
        RQ_NCCL_CHECK(ncclRecv(t.data_ptr(), size_t(t.numel()), nccl_type(t), src, comm_, stream_));
        return std::make_unique<CudaWork>(stream_, t);
    }
    std::unique_ptr<Work> broadcast(at::Tensor& t, int root) override {
        check_tensor(t, "broadcast");
        RQ_NCCL_CHECK(ncclBroadcast(t.data_ptr(), t.data_ptr(), size_t(t.numel()), nccl_type(t),
                                    root, comm_, stream_));
        return std::make_unique<CudaWork>(stream_, t);
    }
    // The Transport contract: the sum in rank order, bitwise the same as the MPI backend's.
    // ncclAllReduce sums in its ring/tree order, so this gathers every rank's tensor [P, n]
    // and adds the rows in rank order; blocking. Costs P times the tensor: the reductions of
    // the pipeline are tables and counters, not weights.
    std::unique_ptr<Work> allreduce_sum(at::Tensor& t) override {
        check_tensor(t, "allreduce_sum");
        traffic_.reduced_bytes += int64_t(t.nbytes());  // time: asynchronous, not counted
        traffic_.reductions += 1;
        at::Tensor all = at::empty({size_, t.numel()}, t.options());
        RQ_NCCL_CHECK(ncclAllGather(t.data_ptr(), all.data_ptr(), size_t(t.numel()), nccl_type(t),
                                    comm_, stream_));
        RQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
        at::Tensor acc = all[0].clone();
        for (int r = 1; r < size_; ++r) acc.add_(all[r]);
        t.copy_(acc.view_as(t));
        RQ_CUDA_CHECK(cudaDeviceSynchronize());
        return std::make_unique<CudaWork>(stream_, t);
    }
    std::unique_ptr<Work> barrier() override {
        RQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
        RQ_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
        return std::make_unique<CudaWork>(stream_, at::Tensor());
    }

  private:
    int          rank_ = 0, size_ = 1;
    ncclComm_t   comm_{};
    cudaStream_t stream_{};
};

}  // namespace

std::unique_ptr<Transport> make_nccl_transport(int device) {
    return std::make_unique<NcclTransport>(device);
}
bool nccl_compiled_in() {
    return true;
}

}  // namespace rq::parallel
