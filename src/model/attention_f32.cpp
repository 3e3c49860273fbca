// The fused fp32 causal attention, forward and backward (requant/model/attention_f32.h), on the
// register tiles of attention_tiles.h: scores (q k^T, and dO v^T in the backward) 4 rows x 16
// keys at a time; weighted row sums (p v, ds k, and over the columns of p and ds: p^T dO and
// ds^T q) 2 rows x 32 columns of D at a time.
#include "requant/model/attention_f32.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>

#include "requant/error.h"
#include "requant/model/attention_tiles.h"
#include "requant/model/vec_math.h"

namespace rq::model {
namespace {

using tiles::out_rows;
using tiles::score_rows;

// Row (b, h, t) of a [B, heads, T, D] fp32 tensor with a contiguous last dimension.
struct Rows {
    const float* p;
    int64_t      sb, sh, st;
    const float* at(int64_t b, int64_t h, int64_t t) const { return p + b * sb + h * sh + t * st; }
};

Rows rows_of(const at::Tensor& x) {
    return {x.data_ptr<float>(), x.stride(0), x.stride(1), x.stride(2)};
}

struct Call {
    Rows    q, k, v;
    int64_t B, H, Hkv, R, T, D;
    double  scale;
};

Call call_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor* v) {
    if (q.scalar_type() != at::kFloat || k.scalar_type() != at::kFloat || q.dim() != 4 ||
        k.dim() != 4 || q.stride(3) != 1 || k.stride(3) != 1 || q.size(0) != k.size(0) ||
        q.size(2) != k.size(2) || q.size(3) != k.size(3) || q.size(1) % k.size(1) != 0 ||
        (v && (v->sizes() != k.sizes() || v->stride(3) != 1 || v->scalar_type() != at::kFloat)))
        throw ShapeError(
            "attention (fp32): q [B, H, T, D], k and v [B, Hkv, T, D], last dim "
            "contiguous, H % Hkv == 0");
    const Rows none{nullptr, 0, 0, 0};
    return {rows_of(q),
            rows_of(k),
            v ? rows_of(*v) : none,
            q.size(0),
            q.size(1),
            k.size(1),
            q.size(1) / k.size(1),
            q.size(2),
            q.size(3),
            1.0 / std::sqrt(double(q.size(3)))};
}

// One task: group g, query positions [t0, t0 + n). p [R*n, t1] receives the probabilities;
// kt (D * T floats) and vr (T pointers) are scratch; o, when given, the output [B, T, H, D].
RQ_VEC_INLINE void block_task(const Call& c, int64_t g, int64_t t0, int64_t n, float* p, float* kt,
                              const float** vr, float* o) {
    const int64_t b = g / c.Hkv, hk = g % c.Hkv, t1 = t0 + n, rows = c.R * n, D = c.D;
    for (int64_t j = 0; j < t1; ++j) {
        const float* kj = c.k.at(b, hk, j);
        for (int64_t d = 0; d < D; ++d) kt[d * t1 + j] = kj[d];
    }
    auto    q_of   = [&](int64_t i) { return c.q.at(b, hk * c.R + i % c.R, t0 + i / c.R); };
    auto    pos_of = [&](int64_t i) { return t0 + i / c.R; };
    int64_t i      = 0;
    for (; i + 4 <= rows; i += 4) {
        const float* qr[4] = {q_of(i), q_of(i + 1), q_of(i + 2), q_of(i + 3)};
        float*       s[4]  = {p + i * t1, p + (i + 1) * t1, p + (i + 2) * t1, p + (i + 3) * t1};
        // Keys up to the last row's position, rounded up to whole tiles: the softmax zeroes
        // what lies beyond each row's position.
        score_rows<4>(qr, kt, t1, D, std::min(t1, (pos_of(i + 3) + 16) / 16 * 16), s);
    }
    for (; i < rows; ++i) {
        const float* qr[1] = {q_of(i)};
        float*       s[1]  = {p + i * t1};
        score_rows<1>(qr, kt, t1, D, pos_of(i) + 1, s);
    }
    for (i = 0; i < rows; ++i) causal_softmax_row(p + i * t1, pos_of(i), t1, c.scale);
    if (o == nullptr) return;
    for (int64_t j = 0; j < t1; ++j) vr[j] = c.v.at(b, hk, j);
    auto o_of = [&](int64_t r) {
        return o + ((b * c.T + pos_of(r)) * c.H + hk * c.R + r % c.R) * D;
    };
    for (i = 0; i + 2 <= rows; i += 2) {
        const float*  pr[2]   = {p + i * t1, p + (i + 1) * t1};
        const int64_t pos[2]  = {pos_of(i), pos_of(i + 1)};
        float*        orow[2] = {o_of(i), o_of(i + 1)};
        out_rows<2>(pr, 1, pos, vr, D, orow);
    }
    for (; i < rows; ++i) {
        const float*  pr[1]   = {p + i * t1};
        const int64_t pos[1]  = {pos_of(i)};
        float*        orow[1] = {o_of(i)};
        out_rows<1>(pr, 1, pos, vr, D, orow);
    }
}

void block_task_base(const Call& c, int64_t g, int64_t t0, int64_t n, float* p, float* kt,
                     const float** vr, float* o) {
    block_task(c, g, t0, n, p, kt, vr, o);
}
__attribute__((target("avx2"))) void block_task_avx2(const Call& c, int64_t g, int64_t t0,
                                                     int64_t n, float* p, float* kt,
                                                     const float** vr, float* o) {
    block_task(c, g, t0, n, p, kt, vr, o);
}

// Scratch of one thread: k transposed (D * T), v row pointers (T), a block's probabilities
// when they are not kept (R * block * T).
struct Scratch {
    std::vector<float>        kt, p;
    std::vector<const float*> vr;
    Scratch(const Call& c, int64_t block)
        : kt(std::size_t(c.D * c.T)), p(std::size_t(c.R * block * c.T)), vr(std::size_t(c.T)) {}
};

// Runs f(id, scratch) for ids [0, n) over the threads, each thread with its own copy of proto.
// The copies are made here, by the calling thread: allocated and freed in each worker, the
// workers' malloc arenas gave them back and faulted them in again as huge pages on every call
// (at 16 x 256 two threads took longer than one).
template <class S, class F>
void parallel_tasks(int64_t n, const S& proto, F f) {
    std::vector<S> scratch(std::size_t(std::max(1, at::get_num_threads())), proto);
    at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
        const auto         tid = std::size_t(at::get_thread_num());
        std::unique_ptr<S> own;  // a thread beyond the count (a nested call): its own
        if (tid >= scratch.size()) own = std::make_unique<S>(proto);
        S& sc = own ? *own : scratch[tid];
        for (int64_t id = lo; id < hi; ++id) f(id, sc);
    });
}

// Every (group, block) task of blocks [first, last). probs(blk): where block blk's
// probabilities go ([G, R*n, t1]), or nullptr for the thread's scratch.
template <class P>
void run_tasks(const Call& c, int64_t block, int64_t first, int64_t last, P probs, float* o) {
    const int64_t nb   = last - first;
    const bool    avx2 = use_avx2();
    parallel_tasks(c.B * c.Hkv * nb, Scratch(c, block), [&](int64_t id, Scratch& sc) {
        const int64_t g = id / nb, blk = first + id % nb, t0 = blk * block;
        const int64_t n = std::min(block, c.T - t0);
        float*        p = probs(blk);
        p               = p != nullptr ? p + g * c.R * n * (t0 + n) : sc.p.data();
        (avx2 ? block_task_avx2 : block_task_base)(c, g, t0, n, p, sc.kt.data(), sc.vr.data(), o);
    });
}

// The backward's scratch: the forward's (to recompute p), v transposed (D * T), dp then ds
// (R * block * T), the block's dO and q rows.
struct BackScratch {
    Scratch                   fwd;
    std::vector<float>        vt, dp;
    std::vector<const float*> xo, xq;
    BackScratch(const Call& c, int64_t block)
        : fwd(c, block),
          vt(std::size_t(c.D * c.T)),
          dp(std::size_t(c.R * block * c.T)),
          xo(std::size_t(c.R * block)),
          xq(xo.size()) {}
};

// x_j += sum_i w[i][j] y_i for keys j in [0, t1), w [rows, t1], over all rows i of the block
// (w is exactly 0 where row i does not see key j, so those terms add nothing).
RQ_VEC_INLINE void add_key_rows(const float* w, int64_t rows, int64_t t1, const float* const* y,
                                int64_t D, float* x) {
    const int64_t last[2] = {rows - 1, rows - 1};
    int64_t       j       = 0;
    for (; j + 2 <= t1; j += 2) {
        const float* wc[2] = {w + j, w + j + 1};
        float*       xr[2] = {x + j * D, x + (j + 1) * D};
        out_rows<2, true>(wc, t1, last, y, D, xr);
    }
    for (; j < t1; ++j) {
        const float* wc[1] = {w + j};
        float*       xr[1] = {x + j * D};
        out_rows<1, true>(wc, t1, last, y, D, xr);
    }
}

// The gradients of group g, block by block in order: dq rows of [B, H, T, D]; dk and dv rows of
// [B, Hkv, T, D] (zero before), accumulated over the blocks. kept: each block's probabilities,
// or nullptr to recompute them. dout: rows of dO [B, T, H, D].
RQ_VEC_INLINE void backward_task(const Call& c, const Rows& dout, int64_t g, int64_t block,
                                 const float* const* kept, BackScratch& sc, float* dq, float* dk,
                                 float* dv) {
    const int64_t b = g / c.Hkv, hk = g % c.Hkv, D = c.D, R = c.R;
    for (int64_t t0 = 0; t0 < c.T; t0 += block) {
        const int64_t n = std::min(block, c.T - t0), t1 = t0 + n, rows = R * n;
        auto          pos_of = [&](int64_t i) { return t0 + i / R; };
        const float*  p      = sc.fwd.p.data();
        if (kept)
            p = kept[t0 / block] + g * rows * t1;
        else
            block_task(c, g, t0, n, sc.fwd.p.data(), sc.fwd.kt.data(), sc.fwd.vr.data(), nullptr);
        for (int64_t j = 0; j < t1; ++j) {
            const float* vj = c.v.at(b, hk, j);
            for (int64_t d = 0; d < D; ++d) sc.vt[std::size_t(d * t1 + j)] = vj[d];
        }
        for (int64_t i = 0; i < rows; ++i) {
            sc.xo[std::size_t(i)] = dout.at(b, hk * R + i % R, pos_of(i));
            sc.xq[std::size_t(i)] = c.q.at(b, hk * R + i % R, pos_of(i));
        }
        // dp = dO v^T, then ds = softmax'(dp) in place.
        float*  ds = sc.dp.data();
        int64_t i  = 0;
        for (; i + 4 <= rows; i += 4) {
            float* s[4] = {ds + i * t1, ds + (i + 1) * t1, ds + (i + 2) * t1, ds + (i + 3) * t1};
            score_rows<4>(sc.xo.data() + i, sc.vt.data(), t1, D,
                          std::min(t1, (pos_of(i + 3) + 16) / 16 * 16), s);
        }
        for (; i < rows; ++i) {
            float* s[1] = {ds + i * t1};
            score_rows<1>(sc.xo.data() + i, sc.vt.data(), t1, D, pos_of(i) + 1, s);
        }
        for (i = 0; i < rows; ++i)
            causal_softmax_backward_row(ds + i * t1, p + i * t1, pos_of(i), t1, c.scale);
        // dq_i = sum_{j <= pos_i} ds_ij k_j.
        const float** kr = sc.fwd.vr.data();
        for (int64_t j = 0; j < t1; ++j) kr[j] = c.k.at(b, hk, j);
        auto dq_of = [&](int64_t r) {
            return dq + ((b * c.H + hk * R + r % R) * c.T + pos_of(r)) * D;
        };
        for (i = 0; i + 2 <= rows; i += 2) {
            const float*  w[2]   = {ds + i * t1, ds + (i + 1) * t1};
            const int64_t pos[2] = {pos_of(i), pos_of(i + 1)};
            float*        o[2]   = {dq_of(i), dq_of(i + 1)};
            out_rows<2>(w, 1, pos, kr, D, o);
        }
        for (; i < rows; ++i) {
            const float*  w[1]   = {ds + i * t1};
            const int64_t pos[1] = {pos_of(i)};
            float*        o[1]   = {dq_of(i)};
            out_rows<1>(w, 1, pos, kr, D, o);
        }
        // dv_j += sum_i p_ij dO_i, dk_j += sum_i ds_ij q_i.
        add_key_rows(p, rows, t1, sc.xo.data(), D, dv + g * c.T * D);
        add_key_rows(ds, rows, t1, sc.xq.data(), D, dk + g * c.T * D);
    }
}

void backward_task_base(const Call& c, const Rows& dout, int64_t g, int64_t block,
                        const float* const* kept, BackScratch& sc, float* dq, float* dk,
                        float* dv) {
    backward_task(c, dout, g, block, kept, sc, dq, dk, dv);
}
__attribute__((target("avx2"))) void backward_task_avx2(const Call& c, const Rows& dout, int64_t g,
                                                        int64_t block, const float* const* kept,
                                                        BackScratch& sc, float* dq, float* dk,
                                                        float* dv) {
    backward_task(c, dout, g, block, kept, sc, dq, dk, dv);
}

}  // namespace

at::Tensor attention_forward_f32(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 int64_t block, std::vector<at::Tensor>* kept) {
    const Call c = call_of(q, k, &v);
    if (block <= 0) throw ShapeError("attention (fp32): block must be > 0");
    at::Tensor          o  = at::empty({c.B, c.T, c.H, c.D}, q.options());
    const int64_t       nb = (c.T + block - 1) / block;
    std::vector<float*> dst(std::size_t(nb), nullptr);
    if (kept) {
        for (int64_t blk = 0; blk < nb; ++blk) {
            const int64_t t0 = blk * block, n = std::min(block, c.T - t0);
            kept->push_back(at::empty({c.B * c.Hkv, c.R * n, t0 + n}, q.options()));
            dst[std::size_t(blk)] = kept->back().data_ptr<float>();
        }
    }
    run_tasks(
        c, block, 0, nb, [&](int64_t blk) { return dst[std::size_t(blk)]; }, o.data_ptr<float>());
    return o;
}

std::array<at::Tensor, 3> attention_backward_f32(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, const at::Tensor& dout,
                                                 int64_t                        block,
                                                 const std::vector<at::Tensor>& kept) {
    const Call c = call_of(q, k, &v);
    if (block <= 0) throw ShapeError("attention (fp32): block must be > 0");
    if (dout.sizes() != at::IntArrayRef{c.B, c.T, c.H, c.D} || dout.scalar_type() != at::kFloat)
        throw ShapeError("attention (fp32): the output gradient must be [B, T, H, D] fp32");
    const at::Tensor g  = dout.stride(3) == 1 ? dout : dout.contiguous();
    const Rows       go = {g.data_ptr<float>(), g.stride(0), g.stride(2), g.stride(1)};
    at::Tensor       dq = at::empty({c.B, c.H, c.T, c.D}, q.options());
    at::Tensor       dk = at::zeros({c.B, c.Hkv, c.T, c.D}, q.options()), dv = at::zeros_like(dk);
    std::vector<const float*> kp;
    for (const at::Tensor& p : kept) kp.push_back(p.data_ptr<float>());
    if (!kept.empty() && std::int64_t(kept.size()) != (c.T + block - 1) / block)
        throw ShapeError("attention (fp32): kept probabilities of another blocking");
    const bool avx2 = use_avx2();
    parallel_tasks(c.B * c.Hkv, BackScratch(c, block), [&](int64_t grp, BackScratch& sc) {
        (avx2 ? backward_task_avx2 : backward_task_base)(
            c, go, grp, block, kp.empty() ? nullptr : kp.data(), sc, dq.data_ptr<float>(),
            dk.data_ptr<float>(), dv.data_ptr<float>());
    });
    return {dq, dk, dv};
}

}  // namespace rq::model
