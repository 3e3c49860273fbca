// Default bodies and the backend factory (requant/dist/transport.h).
#include "requant/dist/transport.h"

#include "requant/io/error.h"

namespace rq::dist {

namespace {
[[noreturn]] void unsupported(const Transport& t, const char* op) {
    throw Error(std::string("Transport ") + t.name() + " does not support " + op);
}
}  // namespace

std::unique_ptr<Work> Transport::send(const at::Tensor&, int, int) { unsupported(*this, "send"); }
std::unique_ptr<Work> Transport::recv(at::Tensor&, int, int) { unsupported(*this, "recv"); }
std::unique_ptr<Work> Transport::broadcast(at::Tensor&, int) { unsupported(*this, "broadcast"); }
std::unique_ptr<Work> Transport::allreduce_sum(at::Tensor&) { unsupported(*this, "allreduce_sum"); }
std::unique_ptr<Work> Transport::barrier() { unsupported(*this, "barrier"); }

std::unique_ptr<Transport> make_transport(const std::string& kind) {
    if (kind == "mpi") return make_mpi_transport();
    if (kind == "nccl") return make_nccl_transport(0);
    throw ConfigError("unknown transport '" + kind + "' (mpi | nccl)");
}

#ifndef RQ_HAVE_NCCL
std::unique_ptr<Transport> make_nccl_transport(int) {
    throw NcclError("this build has no NCCL (configure with CUDA/NCCL found, RQ_WITH_NCCL=ON)");
}
bool nccl_compiled_in() { return false; }
#endif

}  // namespace rq::dist
