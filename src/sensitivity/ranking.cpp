// Distributed order statistics by layer (requant/sensitivity/ranking.h).
#include "requant/sensitivity/ranking.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "requant/error.h"

namespace rq::sensitivity {

uint32_t float_key(float v) {
    uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

float key_float(uint32_t k) {
    const uint32_t b = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float          v;
    std::memcpy(&v, &b, sizeof v);
    return v;
}

LayerRanking::LayerRanking(std::vector<at::Tensor> values, int64_t layer_begin, int64_t n_layer,
                           bool with_sums)
    : layer_begin_(layer_begin), n_layer_(n_layer), with_sums_(with_sums) {
    for (auto& v : values) {
        const at::Tensor f = v.detach().to(at::kFloat).contiguous().view(-1);
        v                  = at::Tensor();
        if (at::isnan(f).any().item<bool>())
            throw NumericError("LayerRanking: NaN among the values");
        const float*          p = f.data_ptr<float>();
        std::vector<uint32_t> k(std::size_t(f.numel()));
        for (std::size_t i = 0; i < k.size(); ++i) k[i] = float_key(p[i]);
        std::sort(k.begin(), k.end(), std::greater<>());
        std::vector<double> pre(with_sums ? k.size() + 1 : 0, 0.0);
        if (with_sums)
            for (std::size_t i = 0; i < k.size(); ++i)
                pre[i + 1] = pre[i] + double(key_float(k[i]));
        keys_.push_back(std::move(k));
        prefix_.push_back(std::move(pre));
    }
}

at::Tensor LayerRanking::count_at_least(parallel::Transport& t, uint32_t key, bool strict) const {
    at::Tensor table = at::zeros({n_layer_, 2}, at::kDouble);  // count, sum
    auto       a     = table.accessor<double, 2>();
    for (std::size_t il = 0; il < keys_.size(); ++il) {
        const auto& k = keys_[il];
        // Keys descend: lower_bound(greater) stops at the first key <= `key` (so n counts
        // keys > key), upper_bound(greater) at the first key < `key` (n counts keys >= key).
        const auto        it = strict ? std::lower_bound(k.begin(), k.end(), key, std::greater<>())
                                      : std::upper_bound(k.begin(), k.end(), key, std::greater<>());
        const std::size_t n  = std::size_t(it - k.begin());
        a[layer_begin_ + int64_t(il)][0] = double(n);
        a[layer_begin_ + int64_t(il)][1] = with_sums_ ? prefix_[il][n] : 0.0;
    }
    t.allreduce_sum(table)->wait();
    return table;
}

int64_t LayerRanking::size(parallel::Transport& t) const {
    at::Tensor n = at::zeros({1}, at::kDouble);
    for (const auto& k : keys_) n += double(k.size());
    t.allreduce_sum(n)->wait();
    return int64_t(n.item<double>());
}

namespace {
double column_sum(const at::Tensor& table, int64_t col) {
    double s = 0;
    auto   a = table.accessor<double, 2>();
    for (int64_t i = 0; i < table.size(0); ++i) s += a[i][col];
    return s;
}
}  // namespace

float LayerRanking::kth_largest(parallel::Transport& t, int64_t k) const {
    const int64_t n = size(t);
    if (k < 1 || k > n)
        throw InternalError("LayerRanking: k = " + std::to_string(k) + " outside 1.." +
                            std::to_string(n));
    // Largest key K with count(key >= K) >= k: bisect on [lo, hi) with count(>= lo) >= k.
    uint64_t lo = 0, hi = uint64_t(1) << 32;
    while (hi - lo > 1) {
        const uint64_t mid = lo + (hi - lo) / 2;
        if (column_sum(count_at_least(t, uint32_t(mid), false), 0) >= double(k))
            lo = mid;
        else
            hi = mid;
    }
    return key_float(uint32_t(lo));
}

double LayerRanking::sum_largest(parallel::Transport& t, int64_t k) const {
    if (!with_sums_) throw InternalError("LayerRanking: built without sums");
    const float      v     = kth_largest(t, k);
    const at::Tensor above = count_at_least(t, float_key(v), true);
    // Everything strictly above the k-th value, plus as many copies of it as complete k.
    return column_sum(above, 1) + double(k - int64_t(column_sum(above, 0))) * double(v);
}

at::Tensor LayerRanking::layer_counts(parallel::Transport& t, float v, bool strict) const {
    return count_at_least(t, float_key(v), strict).select(1, 0).contiguous();
}

double LayerRanking::sum_all(parallel::Transport& t) const {
    if (!with_sums_) throw InternalError("LayerRanking: built without sums");
    return column_sum(count_at_least(t, 0, false), 1);
}

}  // namespace rq::sensitivity
