// Default bodies and the backend factory (requant/parallel/transport.h).
#include "requant/parallel/transport.h"

#include <ATen/ATen.h>

#include "requant/error.h"

namespace rq::parallel {

namespace {
[[noreturn]] void unsupported(const Transport& t, const char* op) {
    throw UnsupportedError(std::string("Transport ") + t.name() + " does not support " + op);
}
}  // namespace

std::unique_ptr<Work> Transport::send(const at::Tensor&, int, int) {
    unsupported(*this, "send");
}
std::unique_ptr<Work> Transport::recv(at::Tensor&, int, int) {
    unsupported(*this, "recv");
}
std::unique_ptr<Work> Transport::broadcast(at::Tensor&, int) {
    unsupported(*this, "broadcast");
}
std::unique_ptr<Work> Transport::allreduce_sum(at::Tensor&) {
    unsupported(*this, "allreduce_sum");
}
std::unique_ptr<Work> Transport::barrier() {
    unsupported(*this, "barrier");
}

std::unique_ptr<Transport> make_transport(io::TransportKind kind) {
    switch (kind) {
        case io::TransportKind::Nccl:
            return make_nccl_transport(-1);
        case io::TransportKind::Mpi:
            break;
    }
    return make_mpi_transport();
}

at::Tensor broadcast_tensor(Transport& t, const at::Tensor& root_tensor, int root,
                            at::ScalarType dtype) {
    const bool me = t.rank() == root;
    at::Tensor nd = at::tensor({me ? int64_t(root_tensor.dim()) : int64_t(0)}, at::kLong);
    t.broadcast(nd, root)->wait();
    at::Tensor shape = me ? at::tensor(root_tensor.sizes().vec(), at::kLong)
                          : at::empty({nd.item<int64_t>()}, at::kLong);
    t.broadcast(shape, root)->wait();
    at::Tensor out = me ? root_tensor.to(dtype).contiguous()
                        : at::empty(std::vector<int64_t>(shape.data_ptr<int64_t>(),
                                                         shape.data_ptr<int64_t>() + shape.numel()),
                                    at::TensorOptions().dtype(dtype));
    t.broadcast(out, root)->wait();
    return out;
}

#ifndef RQ_HAVE_NCCL
std::unique_ptr<Transport> make_nccl_transport(int) {
    throw NcclError("this build has no NCCL (configure with CUDA/NCCL found, RQ_WITH_NCCL=ON)");
}
bool nccl_compiled_in() {
    return false;
}
#endif

}  // namespace rq::parallel
