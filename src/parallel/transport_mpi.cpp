// MPI backend of the data plane (requant/parallel/transport.h): CPU tensors, non-blocking
// point-to-point, deterministic collectives.
#include <ATen/ATen.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <vector>

#include "requant/error.h"
#include "requant/parallel/mpi_check.h"
#include "requant/parallel/transport.h"

namespace rq::parallel {
namespace {

MPI_Datatype mpi_type(const at::Tensor& t) {
    switch (t.scalar_type()) {
        case at::kFloat:
            return MPI_FLOAT;
        case at::kDouble:
            return MPI_DOUBLE;
        case at::kLong:
            return MPI_INT64_T;
        case at::kInt:
            return MPI_INT32_T;
        case at::kBFloat16:
        case at::kHalf:
            return MPI_UINT16_T;  // moved, never reduced
        case at::kByte:
        case at::kBool:
            return MPI_UINT8_T;
        default:
            throw MpiError(std::string("MPI transport: unsupported dtype ") +
                           at::toString(t.scalar_type()));
    }
}

void check_tensor(const at::Tensor& t, const char* op) {
    if (!t.defined() || !t.is_contiguous() || !t.device().is_cpu())
        throw MpiError(std::string("MPI transport ") + op +
                       ": tensor must be a defined, contiguous CPU tensor");
}

// One logical message may need several MPI requests: counts are ints, so anything above
// INT_MAX elements goes in chunks (same peer and tag: MPI keeps them in order).
class MpiWork : public Work {
  public:
    MpiWork(at::Tensor keep) : keep_(std::move(keep)) {}
    std::vector<MPI_Request> reqs;

    void wait() override {
        if (reqs.empty()) return;
        RQ_MPI_CHECK(MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE));
        reqs.clear();
    }
    bool is_completed() override {
        if (reqs.empty()) return true;
        int done = 0;
        RQ_MPI_CHECK(MPI_Testall(int(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE));
        if (done) reqs.clear();
        return done != 0;
    }
    ~MpiWork() override {
        // Never leave MPI writing into freed memory; errors here cannot be thrown.
        if (!reqs.empty()) MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
    }

  private:
    at::Tensor keep_;
};

class DoneWork : public Work {
  public:
    void wait() override {}
    bool is_completed() override { return true; }
};

template <typename Fn>
std::unique_ptr<Work> chunked(const at::Tensor& t, Fn post) {
    auto          w     = std::make_unique<MpiWork>(t);
    const int64_t n     = t.numel();
    const int64_t esize = t.element_size();
    auto*         base  = static_cast<char*>(t.data_ptr());
    for (int64_t off = 0; off < n || (n == 0 && off == 0); off += INT_MAX) {
        const int   cnt = int(std::min<int64_t>(INT_MAX, n - off));
        MPI_Request r;
        post(base + off * esize, cnt, &r);
        w->reqs.push_back(r);
        if (n == 0) break;
    }
    return w;
}

class MpiTransport : public Transport {
  public:
    // `owned`: a communicator of ours (MPI_Comm_split), freed with the transport.
    explicit MpiTransport(MPI_Comm comm, bool owned = false) : comm_(comm), owned_(owned) {
        RQ_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
        RQ_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
        RQ_MPI_CHECK(MPI_Comm_size(comm_, &size_));
    }
    ~MpiTransport() override {
        int fin = 0;
        MPI_Finalized(&fin);
        if (owned_ && !fin) MPI_Comm_free(&comm_);
    }
    MpiTransport(const MpiTransport&)            = delete;
    MpiTransport& operator=(const MpiTransport&) = delete;
    const char*   name() const override { return "mpi"; }
    int           rank() const override { return rank_; }
    int           size() const override { return size_; }

    std::unique_ptr<Work> send(const at::Tensor& t, int dst, int tag) override {
        check_tensor(t, "send");
        const MPI_Datatype dt = mpi_type(t);
        traffic_.sent_bytes += int64_t(t.nbytes());
        return chunked(t, [&](void* p, int n, MPI_Request* r) {
            RQ_MPI_CHECK(MPI_Isend(p, n, dt, dst, tag, comm_, r));
        });
    }
    std::unique_ptr<Work> recv(at::Tensor& t, int src, int tag) override {
        check_tensor(t, "recv");
        const MPI_Datatype dt = mpi_type(t);
        return chunked(t, [&](void* p, int n, MPI_Request* r) {
            RQ_MPI_CHECK(MPI_Irecv(p, n, dt, src, tag, comm_, r));
        });
    }
    std::unique_ptr<Work> broadcast(at::Tensor& t, int root) override {
        check_tensor(t, "broadcast");
        const MPI_Datatype dt = mpi_type(t);
        return chunked(t, [&](void* p, int n, MPI_Request* r) {
            RQ_MPI_CHECK(MPI_Ibcast(p, n, dt, root, comm_, r));
        });
    }
    std::unique_ptr<Work> allreduce_sum(at::Tensor& t) override {
        // MPI_Allreduce may sum in any order; gather to rank 0, add in rank order, broadcast.
        check_tensor(t, "allreduce_sum");
        if (size_ == 1) return std::make_unique<DoneWork>();
        const auto t0 = std::chrono::steady_clock::now();
        // In chunks of at most 16 Mi elements: rank 0 holds size x chunk, not size x tensor;
        // each element is still summed in rank order.
        const MPI_Datatype dt    = mpi_type(t);
        const int64_t      chunk = std::min<int64_t>(t.numel(), int64_t(1) << 24);
        at::Tensor         flat  = t.view({-1});
        for (int64_t off = 0; off < t.numel(); off += chunk) {
            const int64_t n    = std::min(chunk, t.numel() - off);
            at::Tensor    part = flat.narrow(0, off, n);
            at::Tensor    all  = rank_ == 0 ? at::empty({size_, n}, t.options()) : at::Tensor();
            RQ_MPI_CHECK(MPI_Gather(part.data_ptr(), int(n), dt,
                                    rank_ == 0 ? all.data_ptr() : nullptr, int(n), dt, 0, comm_));
            if (rank_ == 0) {
                at::Tensor acc = all[0].clone();
                for (int r = 1; r < size_; ++r) acc.add_(all[r]);
                part.copy_(acc);
            }
            RQ_MPI_CHECK(MPI_Bcast(part.data_ptr(), int(n), dt, 0, comm_));
        }
        traffic_.reduced_bytes += int64_t(t.nbytes());
        traffic_.reductions += 1;
        traffic_.reduce_s +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return std::make_unique<DoneWork>();
    }
    std::unique_ptr<Work> barrier() override {
        RQ_MPI_CHECK(MPI_Barrier(comm_));
        return std::make_unique<DoneWork>();
    }

  private:
    MPI_Comm comm_;
    bool     owned_ = false;
    int      rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Transport> make_mpi_transport(bool self_only) {
    int init = 0;
    MPI_Initialized(&init);
    if (!init) throw MpiError("MPI transport: MPI is not initialised");
    return std::make_unique<MpiTransport>(self_only ? MPI_COMM_SELF : MPI_COMM_WORLD);
}

std::unique_ptr<Transport> make_mpi_group_transport(int color, int key) {
    int init = 0;
    MPI_Initialized(&init);
    if (!init) throw MpiError("MPI transport: MPI is not initialised");
    MPI_Comm comm = MPI_COMM_NULL;
    RQ_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, color, key, &comm));
    return std::make_unique<MpiTransport>(comm, true);
}

}  // namespace rq::parallel
