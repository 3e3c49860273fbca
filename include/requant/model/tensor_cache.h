#pragma once
#include <cstdint>

// A caching CPU allocator for libtorch. Every forward+backward step allocates the same tensors
// again; freed to the system (glibc mmaps every block over its threshold), each fresh block is
// faulted in page by page, which on these VMs costs more than the arithmetic of an elementwise
// op (BUILD-NOTES §4: first touch at 0.1-0.3 GB/s). The cache keeps freed blocks of at least
// kMinCachedBytes in free lists by size class and hands them to the next request of the same
// class, so a step after the first allocates nothing new. What it holds is bounded: past the
// cap, the blocks freed longest ago go back to the system.

namespace rq::model {

// Blocks below this go straight to the default allocator (glibc's heap keeps them anyway).
constexpr int64_t kMinCachedBytes = int64_t(1) << 20;
// The default bound on the bytes the cache holds while no tensor uses them. It should hold a
// pass's freed activations, or the next pass faults them in again: at llama-7m-en's 16 x 256,
// forward+backward ran 1.3-1.4x faster with 1-2 GiB than with 256 MiB (bench_model). A run
// shrinks it to what its memory limit leaves beside the plan (phases/prepare.cpp).
constexpr int64_t kDefaultTensorCacheBytes = int64_t(1) << 30;

struct TensorCacheStats {
    int64_t hits = 0, misses = 0;  // requests of >= kMinCachedBytes served from / not from it
    int64_t cached_bytes  = 0;     // held for reuse now
    int64_t evicted_bytes = 0;     // given back to the system past the cap, in all
};

// Makes the cache libtorch's CPU allocator for the rest of the process (tensors allocated
// before keep their own deleter). cap_bytes <= 0 installs nothing. Calling it again changes the
// cap. Thread-safe.
void             install_tensor_cache(int64_t cap_bytes = kDefaultTensorCacheBytes);
TensorCacheStats tensor_cache_stats();
// The cap the programs install: RQ_TENSOR_CACHE_MIB (MiB; 0 turns the cache off) or
// kDefaultTensorCacheBytes.
int64_t tensor_cache_cap_from_env();

}  // namespace rq::model
