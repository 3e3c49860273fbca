// Sparse-part selection: global or per-linear top-k by score, random (requant/decompose/select.h).
#include "requant/decompose/select.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>

#include "requant/error.h"
#include "requant/quant/sparse.h"
#include "requant/sensitivity/ranking.h"

namespace rq::decompose {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// The score a linear is ranked by: signed or absolute, -inf where taken, -0 made +0 so that
// float equality and the ranking's order keys agree on ties.
at::Tensor ranked(const at::Tensor& s, const at::Tensor& taken, bool signed_ranking) {
    at::Tensor v =
        (signed_ranking ? s.detach().to(at::kFloat) : s.detach().to(at::kFloat).abs()) + 0.0f;
    return taken.defined() ? v.masked_fill(taken, -kInf) : v;
}

int64_t free_count(const at::Tensor& v) {
    return at::isfinite(v).sum().item<int64_t>();
}

}  // namespace

model::StageTensors select_top(parallel::Transport& t, const model::StageTensors& score,
                               const model::StageTensors& taken, double fraction,
                               const SelectOptions& opt, int64_t layer_begin, int64_t n_layer) {
    const std::size_t nl       = score.size();
    auto              taken_of = [&](std::size_t il, std::size_t i) {
        return taken.empty() ? at::Tensor() : taken[il][i];
    };
    model::StageTensors out(nl);
    if (opt.scope == io::SelectScope::Linear) {
        for (std::size_t il = 0; il < nl; ++il)
            for (std::size_t i = 0; i < model::kNumLinears; ++i) {
                const at::Tensor v = ranked(score[il][i], taken_of(il, i), opt.signed_ranking);
                const int64_t    k =
                    std::min(free_count(v), int64_t(std::llround(fraction * double(v.numel()))));
                out[il][i] = quant::topk_mask(v, k);
            }
        return out;
    }
    // The ranked values of a stage layer, its linears flattened in order: made again where
    // needed rather than held beside the ranking (4 bytes per weight each).
    auto layer_values = [&](std::size_t il) {
        std::vector<at::Tensor> parts;
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            parts.push_back(ranked(score[il][i], taken_of(il, i), opt.signed_ranking).view(-1));
        return at::cat(parts);
    };
    std::vector<at::Tensor> per_layer;
    for (std::size_t il = 0; il < nl; ++il) per_layer.push_back(layer_values(il));
    // Order statistics only, consuming the values: 4 bytes per weight while ranking.
    const sensitivity::LayerRanking rk(std::move(per_layer), layer_begin, n_layer,
                                       /*with_sums=*/false);
    const int64_t n_free = int64_t(rk.layer_counts(t, -kInf, true).sum().item<double>());
    const int64_t k      = std::min(n_free, int64_t(std::llround(fraction * double(rk.size(t)))));
    for (std::size_t il = 0; il < nl; ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i)
            out[il][i] = at::zeros(score[il][i].sizes(), at::kBool);
    if (k <= 0) return out;
    const float      tau = rk.kth_largest(t, k);
    const at::Tensor gt = rk.layer_counts(t, tau, true), ge = rk.layer_counts(t, tau, false);
    // Ties at tau go to the lowest (layer, linear, index): layers in order take what is left.
    int64_t need = k - int64_t(gt.sum().item<double>());
    for (int64_t l = 0; l < n_layer; ++l) {
        const int64_t avail = int64_t(ge[l].item<double>() - gt[l].item<double>());
        const int64_t take  = std::min(need, avail);
        need -= take;
        const int64_t il = l - layer_begin;
        if (il < 0 || il >= int64_t(nl)) continue;
        const at::Tensor v    = layer_values(std::size_t(il));
        at::Tensor       mask = v > tau;
        if (take > 0) {
            const at::Tensor ties = at::nonzero(v == tau).view(-1).narrow(0, 0, take);
            mask.index_fill_(0, ties, true);
        }
        int64_t off = 0;
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const int64_t n = score[std::size_t(il)][i].numel();
            out[std::size_t(il)][i] =
                mask.narrow(0, off, n).view(score[std::size_t(il)][i].sizes()).clone();
            off += n;
        }
    }
    return out;
}

model::StageTensors select_random(const model::StageTensors& like, const model::StageTensors& taken,
                                  double fraction, int64_t layer_begin, uint64_t seed) {
    model::StageTensors out(like.size());
    for (std::size_t il = 0; il < like.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const uint64_t layer = uint64_t(layer_begin) + il;
            at::Generator  g =
                at::detail::createCPUGenerator(seed * 1000003ULL + layer * model::kNumLinears + i);
            at::Tensor       r  = at::rand(like[il][i].sizes(), g, at::kFloat);
            const at::Tensor tk = taken.empty() ? at::Tensor() : taken[il][i];
            if (tk.defined()) r.masked_fill_(tk, -kInf);
            const int64_t k =
                std::min(free_count(r), int64_t(std::llround(fraction * double(r.numel()))));
            out[il][i] = quant::topk_mask(r, k);
        }
    return out;
}

model::StageTensors masks_or(const model::StageTensors& a, const model::StageTensors& b) {
    if (a.empty()) return b;
    if (b.empty()) return a;
    model::StageTensors out(a.size());
    for (std::size_t il = 0; il < a.size(); ++il)
        for (std::size_t i = 0; i < model::kNumLinears; ++i) {
            const at::Tensor &x = a[il][i], &y = b[il][i];
            out[il][i] = x.defined() && y.defined() ? x.logical_or(y) : x.defined() ? x : y;
        }
    return out;
}

int64_t masks_count(const model::StageTensors& m) {
    int64_t n = 0;
    for (const auto& l : m)
        for (const auto& x : l)
            if (x.defined()) n += x.sum().item<int64_t>();
    return n;
}

}  // namespace rq::decompose
