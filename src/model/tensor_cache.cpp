// Caching CPU allocator for libtorch (requant/model/tensor_cache.h).
#include "requant/model/tensor_cache.h"

#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "requant/error.h"

namespace rq::model {
namespace {

// Size classes: 256 KiB steps up to 32 MiB, 2 MiB steps (a huge page) above; at most 1/4 of a
// block is slack.
constexpr std::size_t kSmallStep = std::size_t(1) << 18, kLargeStep = std::size_t(1) << 21;
constexpr std::size_t kLargeFrom = std::size_t(1) << 25;

std::size_t size_class(std::size_t n) {
    const std::size_t step = n < kLargeFrom ? kSmallStep : kLargeStep;
    return (n + step - 1) / step * step;
}

class TensorCache final : public c10::Allocator {
  public:
    explicit TensorCache(c10::Allocator* base) : base_(base) {}

    void set_cap(int64_t cap) {
        std::lock_guard<std::mutex> lock(mu_);
        cap_ = std::size_t(cap);
        evict_to_cap();
    }

    TensorCacheStats stats() const {
        std::lock_guard<std::mutex> lock(mu_);
        return stats_;
    }

    c10::DataPtr allocate(std::size_t n) const override {
        if (int64_t(n) < kMinCachedBytes) return base_->allocate(n);
        const std::size_t cls   = size_class(n);
        auto              block = std::make_unique<Block>();
        {
            std::lock_guard<std::mutex> lock(mu_);
            auto                        it = free_.find(cls);
            if (it != free_.end()) {
                block = std::move(it->second);
                free_.erase(it);
                stats_.cached_bytes -= int64_t(cls);
                ++stats_.hits;
            } else {
                ++stats_.misses;
            }
        }
        if (!block->mem) block->mem = base_->allocate(cls);
        block->cls   = cls;
        block->owner = this;
        void* data   = block->mem.get();
        return {data, block.release(), &TensorCache::release, c10::Device(c10::DeviceType::CPU)};
    }

  private:
    struct Block {
        c10::DataPtr       mem;  // from the base allocator, freed with it
        std::size_t        cls      = 0;
        uint64_t           freed_at = 0;
        const TensorCache* owner    = nullptr;
    };

    static void release(void* ctx) {
        std::unique_ptr<Block> b(static_cast<Block*>(ctx));
        b->owner->put_back(std::move(b));
    }

    void put_back(std::unique_ptr<Block> b) const {
        std::lock_guard<std::mutex> lock(mu_);
        if (b->cls > cap_) return;  // never cached: freed now
        b->freed_at = ++clock_;
        stats_.cached_bytes += int64_t(b->cls);
        const std::size_t cls = b->cls;
        free_.emplace(cls, std::move(b));
        evict_to_cap();
    }

    // Frees the blocks freed longest ago until the cache holds at most cap_ bytes.
    void evict_to_cap() const {
        while (std::size_t(stats_.cached_bytes) > cap_ && !free_.empty()) {
            auto oldest = free_.begin();
            for (auto it = free_.begin(); it != free_.end(); ++it)
                if (it->second->freed_at < oldest->second->freed_at) oldest = it;
            stats_.cached_bytes -= int64_t(oldest->first);
            stats_.evicted_bytes += int64_t(oldest->first);
            free_.erase(oldest);
        }
    }

    c10::Allocator*                                            base_;
    mutable std::mutex                                         mu_;
    mutable std::multimap<std::size_t, std::unique_ptr<Block>> free_;
    mutable TensorCacheStats                                   stats_;
    mutable uint64_t                                           clock_ = 0;
    std::size_t                                                cap_   = 0;
};

std::mutex   g_install;
TensorCache* g_cache = nullptr;  // lives for the process: tensors may outlive every scope

}  // namespace

void install_tensor_cache(int64_t cap_bytes) {
    std::lock_guard<std::mutex> lock(g_install);
    if (g_cache == nullptr) {
        if (cap_bytes <= 0) return;
        g_cache = new TensorCache(c10::GetDefaultCPUAllocator());
        g_cache->set_cap(cap_bytes);
        c10::SetCPUAllocator(g_cache, /*priority=*/1);
        return;
    }
    g_cache->set_cap(std::max<int64_t>(0, cap_bytes));
}

TensorCacheStats tensor_cache_stats() {
    std::lock_guard<std::mutex> lock(g_install);
    return g_cache ? g_cache->stats() : TensorCacheStats{};
}

int64_t tensor_cache_cap_from_env() {
    const char* mib = std::getenv("RQ_TENSOR_CACHE_MIB");
    if (mib == nullptr || *mib == 0) return kDefaultTensorCacheBytes;
    char*         end = nullptr;
    const int64_t v   = std::strtoll(mib, &end, 10);
    if (*end != 0 || v < 0)
        throw ConfigError(std::string("RQ_TENSOR_CACHE_MIB: not a count of MiB: ") + mib);
    return v << 20;
}

}  // namespace rq::model
