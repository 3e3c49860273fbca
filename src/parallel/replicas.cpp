// Data-parallel replica layout (requant/parallel/replicas.h).
#include "requant/parallel/replicas.h"

#include <algorithm>
#include <string>

#include "requant/error.h"

namespace rq::parallel {

ReplicaLayout replica_layout(int world_rank, int world_size, int replicas) {
    if (replicas < 1 || world_size % replicas != 0)
        throw ConfigError("run.replicas = " + std::to_string(replicas) + " does not divide the " +
                          std::to_string(world_size) +
                          " ranks: launch replicas x stages ranks (mpirun -np)");
    ReplicaLayout l;
    l.world_rank = world_rank;
    l.world_size = world_size;
    l.replicas   = replicas;
    l.stages     = world_size / replicas;
    l.replica    = world_rank / l.stages;
    l.stage      = world_rank % l.stages;
    return l;
}

std::pair<int64_t, int64_t> replica_share(int64_t M, int replica, int replicas) {
    const int64_t base = M / replicas, extra = M % replicas, k = replica;
    const int64_t begin = k * base + std::min(k, extra);
    return {begin, begin + base + (k < extra ? 1 : 0)};
}

}  // namespace rq::parallel
