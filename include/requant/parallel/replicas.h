#pragma once
#include <cstdint>
#include <utility>

// Data-parallel replicas of the pipeline (run.replicas): the world of P ranks is R replicas x
// S stages, world rank w = replica * S + stage. Each replica is a whole pipeline over its share
// of the microbatches; the ranks that hold one stage in every replica reduce their sums in
// replica order (Transport::allreduce_sum), so a result depends on R but not on S.

namespace rq::parallel {

struct ReplicaLayout {
    int world_rank = 0, world_size = 1;
    int replicas = 1, stages = 1;  // R, S
    int replica = 0, stage = 0;
};

// Throws ConfigError unless 1 <= replicas and world_size is a multiple of replicas.
ReplicaLayout replica_layout(int world_rank, int world_size, int replicas);

// Microbatches [begin, end) of `replica` among M: contiguous, in order, sizes differing by at
// most one, the larger shares first.
std::pair<int64_t, int64_t> replica_share(int64_t M, int replica, int replicas);

}  // namespace rq::parallel
