// The memory-bounded forms of the model against their plain twins: blocked causal attention
// (causal_attention vs causal_attention_ref), the chunked LM-head loss (head_losses vs
// head_losses_ref) and the layer-by-layer recomputing backward (Stage::backward over a tape vs
// autograd over forward()'s whole graph). With one block or chunk the operations are the same,
// so the results are equal bit for bit; with many, equal to fp64 rounding.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <climits>
#include <cstdio>

#include "requant/error.h"
#include "requant/model/attention.h"
#include "requant/model/head_loss.h"
#include "requant/model/llama.h"
#include "requant/model/vec_math.h"
#include "tiny_model.h"

namespace rq::model {
namespace {

at::Tensor randn(at::IntArrayRef shape, uint64_t seed, at::ScalarType dt = at::kDouble) {
    at::Generator g = at::detail::createCPUGenerator(seed);
    return at::randn(shape, g, at::TensorOptions().dtype(dt));
}

double max_rel(const at::Tensor& a, const at::Tensor& b) {
    return ((a - b).abs().max() / b.abs().max()).item<double>();
}

// max_rel, or the absolute difference where b is all zero (one position: dq and dk are 0).
double max_rel_or_abs(const at::Tensor& a, const at::Tensor& b) {
    const double scale = b.abs().max().item<double>();
    return (a - b).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

struct AttnOut {
    at::Tensor o, dq, dk, dv;
};

// Output and the gradients of sum(o * w) for a fixed random w.
template <class F>
AttnOut attn_grads(F f, const at::Tensor& q0, const at::Tensor& k0, const at::Tensor& v0) {
    at::Tensor q = q0.clone().requires_grad_(true), k = k0.clone().requires_grad_(true),
               v = v0.clone().requires_grad_(true);
    at::Tensor o = f(q, k, v);
    (o * randn(o.sizes(), 99, o.scalar_type())).sum().backward();
    return {o.detach(), q.grad(), k.grad(), v.grad()};
}

struct AttnCase {
    int64_t B, H, Hkv, T, D;
};

// Probabilities kept from forward for backward give the recomputing backward's results bit for
// bit, in every blocking; a call without a graph (no input requires grad) keeps nothing.
TEST(BlockedAttention, KeptProbabilitiesEqualRecomputedBitwise) {
    for (auto dt : {at::kFloat, at::kDouble})
        for (AttnCase c : {AttnCase{2, 6, 2, 37, 8}, AttnCase{1, 8, 8, 32, 16}}) {
            const at::Tensor q = randn({c.B, c.H, c.T, c.D}, 4, dt),
                             k = randn({c.B, c.Hkv, c.T, c.D}, 5, dt),
                             v = randn({c.B, c.Hkv, c.T, c.D}, 6, dt);
            for (int64_t block : {c.T, int64_t(1), int64_t(5)}) {
                const auto kept =
                    attn_grads([&](auto& a, auto& b,
                                   auto& d) { return causal_attention(a, b, d, block, INT64_MAX); },
                               q, k, v);
                const auto again = attn_grads(
                    [&](auto& a, auto& b, auto& d) { return causal_attention(a, b, d, block, 0); },
                    q, k, v);
                const std::string at = "T " + std::to_string(c.T) + ", block " +
                                       std::to_string(block) +
                                       (dt == at::kFloat ? " fp32" : " fp64");
                EXPECT_TRUE(at::equal(kept.o, again.o)) << at;
                EXPECT_TRUE(at::equal(kept.dq, again.dq)) << at;
                EXPECT_TRUE(at::equal(kept.dk, again.dk)) << at;
                EXPECT_TRUE(at::equal(kept.dv, again.dv)) << at;
            }
        }
    EXPECT_GT(attention_kept_bytes(4, 8, 256), 0);    // llama-7m-en's PQI microbatch
    EXPECT_EQ(attention_kept_bytes(1, 32, 4096), 0);  // a long sequence: recomputed
    EXPECT_EQ(attention_kept_bytes(2, 4, 64) % 4, 0);
}

TEST(BlockedAttention, MatchesTheReferenceInEveryBlocking) {
    // fp32 to 1e-5 and fp64 to fp64 rounding, for one block and for blocks that cut the
    // sequence unevenly; R = 3 query heads per key/value head, R = 1 and R = 2.
    for (auto dt : {at::kFloat, at::kDouble})
        for (AttnCase c :
             {AttnCase{2, 6, 2, 37, 8}, AttnCase{1, 8, 8, 32, 16}, AttnCase{2, 4, 2, 11, 6}}) {
            const at::Tensor q = randn({c.B, c.H, c.T, c.D}, 4, dt),
                             k = randn({c.B, c.Hkv, c.T, c.D}, 5, dt),
                             v = randn({c.B, c.Hkv, c.T, c.D}, 6, dt);
            const auto ref     = attn_grads(
                [](auto& a, auto& b, auto& d) { return causal_attention_ref(a, b, d); }, q, k, v);
            const double tol = dt == at::kFloat ? 1e-5 : 1e-13;
            for (int64_t block : {c.T, int64_t(1), int64_t(5), c.T - 1}) {
                const auto got = attn_grads(
                    [&](auto& a, auto& b, auto& d) { return causal_attention(a, b, d, block); }, q,
                    k, v);
                ASSERT_EQ(got.o.sizes(), ref.o.sizes());
                EXPECT_TRUE(got.o.is_contiguous()) << "o_proj takes it as a view";
                EXPECT_LT(max_rel(got.o, ref.o), tol) << "T=" << c.T << " block " << block;
                EXPECT_LT(max_rel(got.dq, ref.dq), tol) << "T=" << c.T << " block " << block;
                EXPECT_LT(max_rel(got.dk, ref.dk), tol) << "T=" << c.T << " block " << block;
                EXPECT_LT(max_rel(got.dv, ref.dv), tol) << "T=" << c.T << " block " << block;
            }
        }
}

// The fused fp32 kernels (attention_f32.cpp) read q, k, v through their strides (the model
// passes transposed views of the projections) and tile D by 32 and 8, or go one by one: every
// such shape matches the reference, forward and backward, and gives the same bits on 1 and 2
// threads and in the AVX2 and baseline builds (each element is summed in one order by one
// thread, without FMA), with probabilities kept or recomputed.
TEST(BlockedAttention, Fp32KernelsSameBitsOnAnyThreadsAndBuild) {
    struct Case {
        int64_t B, H, Hkv, T, D, block;
    };
    std::printf("AVX2 build in use on this CPU: %s\n", use_avx2() ? "yes" : "no (both baseline)");
    const int threads = at::get_num_threads();
    for (Case c : {Case{2, 8, 4, 70, 32, 16}, Case{1, 4, 1, 45, 64, 45}, Case{2, 6, 3, 33, 40, 7},
                   Case{1, 2, 2, 19, 6, 5}, Case{1, 1, 1, 1, 4, 1}, Case{1, 8, 1, 3, 8, 64}}) {
        // [B, T, heads, D] viewed as [B, heads, T, D], as the projections give them.
        const at::Tensor q    = randn({c.B, c.T, c.H, c.D}, 7, at::kFloat).transpose(1, 2),
                         k    = randn({c.B, c.T, c.Hkv, c.D}, 8, at::kFloat).transpose(1, 2),
                         v    = randn({c.B, c.T, c.Hkv, c.D}, 9, at::kFloat).transpose(1, 2);
        const std::string at  = "D " + std::to_string(c.D) + ", T " + std::to_string(c.T);
        const auto        ref = attn_grads(
            [](auto& a, auto& b, auto& d) { return causal_attention_ref(a, b, d); }, q, k, v);
        auto run = [&](int nthreads, bool baseline, int64_t keep) {
            at::set_num_threads(nthreads);
            force_baseline(baseline);
            const auto r = attn_grads(
                [&](auto& a, auto& b, auto& d) { return causal_attention(a, b, d, c.block, keep); },
                q, k, v);
            force_baseline(false);
            at::set_num_threads(threads);
            return r;
        };
        const AttnOut two = run(2, false, 0);
        EXPECT_LT(max_rel_or_abs(two.o, ref.o), 1e-5) << at;
        EXPECT_LT(max_rel_or_abs(two.dq, ref.dq), 1e-5) << at;
        EXPECT_LT(max_rel_or_abs(two.dk, ref.dk), 1e-5) << at;
        EXPECT_LT(max_rel_or_abs(two.dv, ref.dv), 1e-5) << at;
        for (const AttnOut& r : {run(1, false, 0), run(2, true, 0), run(2, false, INT64_MAX)}) {
            EXPECT_TRUE(at::equal(two.o, r.o)) << at;
            EXPECT_TRUE(at::equal(two.dq, r.dq)) << at;
            EXPECT_TRUE(at::equal(two.dk, r.dk)) << at;
            EXPECT_TRUE(at::equal(two.dv, r.dv)) << at;
        }
    }
}

TEST(CausalSoftmax, FusedMatchesTheReferenceAndAutograd) {
    // Rows of 3 heads per position, queries [t0, t0 + n) against keys [0, t0 + n).
    const int64_t G = 2, R = 3, t0 = 5, n = 4, t1 = t0 + n;
    const double  scale = 0.37;
    for (auto dt : {at::kFloat, at::kDouble}) {
        const double tol = dt == at::kFloat ? 1e-6 : 1e-14;
        at::Tensor   s   = randn({G, R * n, t1}, 21, dt) * 4;
        at::Tensor   ref = s.clone().requires_grad_(true);
        at::Tensor   pr  = causal_softmax_ref(ref, t0, R, scale);
        at::Tensor   p   = s.clone();
        causal_softmax_(p, t0, R, scale);
        EXPECT_LT(max_rel(p, pr.detach()), tol);
        // Masked keys are exactly 0: row i sees keys [0, t0 + i / R].
        for (int64_t i = 0; i < R * n; ++i)
            EXPECT_EQ(
                p[0][i].narrow(0, t0 + i / R + 1, t1 - t0 - i / R - 1).abs().sum().item<double>(),
                0.0);
        const at::Tensor dp = randn({G, R * n, t1}, 22, dt);
        pr.backward(dp);
        at::Tensor ds = dp.clone();
        causal_softmax_backward_(ds, p, t0, R, scale);
        EXPECT_LT(max_rel(ds, ref.grad()), tol);
    }
    at::Tensor bad = at::zeros({1, 4, 3});
    EXPECT_THROW(causal_softmax_(bad, 0, 3, 1.0), ShapeError);
}

TEST(BlockedAttention, BlockSizeBoundsTheScores) {
    // Every block's scores fit kAttentionBlockElems (unless a block is at its 16-row floor),
    // and a short sequence is one block.
    for (int64_t T : {64, 512, 2048, 4096, 131072}) {
        const int64_t n = attention_block(1, 32, T);
        EXPECT_GE(n, 1);
        EXPECT_LE(n, T);
        if (n > 16) {
            EXPECT_LE(32 * n * T, kAttentionBlockElems) << "T=" << T;
        }
    }
    EXPECT_EQ(attention_block(1, 32, 40), 40);
    EXPECT_EQ(attention_block(1, 32, 512), kAttentionBlockPositions);
    EXPECT_LT(attention_block(1, 32, 131072), kAttentionBlockPositions);
}

struct LossOut {
    at::Tensor loss, dx, dhead;
};

template <class F>
LossOut loss_grads(F f, const at::Tensor& x0, const at::Tensor& h0, const at::Tensor& tgt) {
    at::Tensor x = x0.clone().requires_grad_(true), h = h0.clone().requires_grad_(true);
    at::Tensor l = f(x, h, tgt);
    (l * randn(l.sizes(), 98, l.scalar_type())).sum().backward();
    return {l.detach(), x.grad(), h.grad()};
}

// The fused cross-entropy (log-sum-exp per row, the gradient in one pass) against autograd over
// materialised logits: fp32 to 1e-5 and fp64 to fp64 rounding, in one chunk and in many; the
// double backward (create_graph) goes through ATen's formulas and matches the twin's.
TEST(ChunkedHeadLoss, MatchesTheReferenceInOneChunkAndMany) {
    const int64_t B = 3, n = 13, C = 10, V = 29;
    at::Generator g   = at::detail::createCPUGenerator(8);
    at::Tensor    tgt = at::randint(0, V, {B, n}, g, at::kLong);
    for (auto dt : {at::kFloat, at::kDouble}) {
        const at::Tensor x = randn({B, n, C}, 9, dt), h = randn({V, C}, 10, dt);
        const auto       ref = loss_grads(
            [](auto& a, auto& b, auto& t) { return head_losses_ref(a, b, t); }, x, h, tgt);
        const double tol = dt == at::kFloat ? 1e-5 : 1e-13;
        for (int64_t rows : {int64_t(1) << 20, int64_t(1), int64_t(4), int64_t(38)}) {
            const auto got = loss_grads(
                [&](auto& a, auto& b, auto& t) { return head_losses(a, b, t, rows); }, x, h, tgt);
            EXPECT_LT(max_rel(got.loss, ref.loss), tol) << rows << " rows";
            EXPECT_LT(max_rel(got.dx, ref.dx), tol) << rows << " rows";
            EXPECT_LT(max_rel(got.dhead, ref.dhead), tol) << rows << " rows";
        }
    }
    // Second order: d/dx of (dL/dx . u), through the chunked loss and through the twin.
    const at::Tensor x0 = randn({B, n, C}, 11), h = randn({V, C}, 12), u = randn({B, n, C}, 13);
    at::Tensor       hv[2];
    for (int k = 0; k < 2; ++k) {
        at::Tensor x = x0.clone().requires_grad_(true);
        at::Tensor l = (k ? head_losses(x, h, tgt, 5) : head_losses_ref(x, h, tgt)).sum();
        at::Tensor d = torch::autograd::grad({l}, {x}, {}, true, true)[0];
        hv[k]        = torch::autograd::grad({(d * u).sum()}, {x})[0];
    }
    EXPECT_LT(max_rel(hv[1], hv[0]), 1e-12);
}

TEST(ChunkedHeadLoss, RefusesTargetsOutsideTheVocabulary) {
    const at::Tensor x = randn({1, 3, 4}, 9, at::kFloat), h = randn({5, 4}, 10, at::kFloat);
    for (int64_t bad : {int64_t(5), int64_t(-1)}) {
        const at::Tensor t = at::tensor(std::vector<int64_t>{0, bad, 1}).view({1, 3});
        EXPECT_THROW(head_losses(x, h, t), ShapeError) << bad;
    }
}

// Weight gradients of a stage and its input gradient, after one backward.
std::vector<at::Tensor> stage_grads(Stage& s, const at::Tensor& gin) {
    std::vector<at::Tensor> out;
    for (auto& lw : s.weights().layers)
        for (Linear l : kLinears) {
            const at::Tensor& g = lw.linear(l).grad();
            out.push_back(g.defined() ? g.clone() : at::Tensor());
        }
    out.push_back(gin.defined() ? gin.clone() : at::Tensor());
    return out;
}

void clear_grads(Stage& s) {
    for (auto& lw : s.weights().layers)
        for (Linear l : kLinears)
            if (lw.linear(l).grad().defined()) lw.linear(l).mutable_grad() = at::Tensor();
}

// The recomputing backward gives autograd's whole-graph gradients bit for bit, on the first,
// a middle and the last stage, with weight gradients on every layer or only from layer 1 up.
TEST(RecomputeBackward, MatchesTheWholeGraphBitwise) {
    for (bool tied : {false, true})
        for (StageRange r : {StageRange{0, 3, true, true}, StageRange{0, 2, true, false},
                             StageRange{1, 2, false, false}, StageRange{1, 3, false, true}})
            for (bool skip_first : {false, true}) {
                const auto c = test::tiny_config(tied);
                Stage      s(c, random_stage_weights(c, r, at::kFloat, 7), 16);
                enable_linear_grads(s.weights());
                if (skip_first)
                    for (Linear l : kLinears)
                        s.weights().layers[0].linear(l).set_requires_grad(false);
                const at::Tensor  tok  = test::tiny_tokens(c, 2, 11, 3);
                at::Tensor        in   = r.first ? tok : randn({2, 11, c.n_embd}, 4, at::kFloat);
                const at::Tensor  gout = r.last ? at::scalar_tensor(1.0 / 20, at::kFloat)
                                                : randn({2, 11, c.n_embd}, 5, at::kFloat);
                const std::string at   = "layers [" + std::to_string(r.layer_begin) + ", " +
                                       std::to_string(r.layer_end) + ")" +
                                       (skip_first ? ", layer 0 frozen" : "");

                at::Tensor x   = r.first ? in : in.clone().requires_grad_(true);
                at::Tensor out = s.forward(x, tok);
                const auto ref = stage_grads(s, stage_backward(x, out, gout));
                clear_grads(s);

                for (bool keep : {false, true}) {  // recomputing, then over kept graphs
                    const std::string how = at + (keep ? ", graph kept" : ", recomputed");
                    StageTape         tape;
                    at::Tensor        out2 = s.forward_recorded(in, tok, tape, keep);
                    EXPECT_TRUE(at::equal(out2, out.detach())) << how << ": forward";
                    EXPECT_FALSE(out2.requires_grad()) << how;
                    EXPECT_EQ(tape.kept(), keep) << how;
                    const auto got = stage_grads(s, s.backward(tape, gout));
                    clear_grads(s);
                    ASSERT_EQ(got.size(), ref.size());
                    for (std::size_t i = 0; i < got.size(); ++i) {
                        ASSERT_EQ(got[i].defined(), ref[i].defined()) << how << ": tensor " << i;
                        if (got[i].defined()) {
                            EXPECT_TRUE(at::equal(got[i], ref[i])) << how << ": tensor " << i;
                        }
                    }
                }
            }
}

// A kept graph on a stage whose linears take no gradient (the first stage, all frozen) keeps
// nothing: backward has no work, as when recomputing.
TEST(RecomputeBackward, NothingIsKeptWithoutGradients) {
    const auto c = test::tiny_config(false);
    Stage      s(c, random_stage_weights(c, StageRange{0, 2, true, false}, at::kFloat, 7), 16);
    StageTape  tape;
    s.forward_recorded(test::tiny_tokens(c, 2, 11, 3), test::tiny_tokens(c, 2, 11, 3), tape, true);
    EXPECT_FALSE(tape.kept());
    EXPECT_FALSE(s.backward(tape, randn({2, 11, c.n_embd}, 5, at::kFloat)).defined());
}

}  // namespace
}  // namespace rq::model
