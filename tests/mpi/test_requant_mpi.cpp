// Sparse-part selection under mpirun: the global top-k by score across ranks equals the one-rank
// selection bit for bit (ties to the lower layer, linear, index), takes exactly k, never a
// taken weight, and nothing it leaves out scores higher; per-linear scope and random selection
// take their counts and are rank independent too.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include "requant/decompose/select.h"

namespace rq::decompose {
namespace {

constexpr int64_t kLayers = 5;

// Scores of layer l, linear i: a few levels (ties), the same on every rank.
at::Tensor score_of(int64_t l, int64_t i) {
    const int64_t O = 6 + i, I = 9 + l;
    at::Tensor    v = at::sin(at::arange(O * I, at::kFloat) * (0.7 + 0.13 * double(i + 7 * l)));
    return (at::round(v * 8) / 8).view({O, I});
}
at::Tensor taken_of(int64_t l, int64_t i) {
    return (at::arange(score_of(l, i).numel(), at::kLong).remainder(11 + i) == 0)
        .view(score_of(l, i).sizes());
}

struct Slice {
    int64_t             begin, end;
    model::StageTensors score;
    model::StageTensors taken;
};
Slice slice(int rank, int P) {
    Slice s{rank * kLayers / P, (rank + 1) * kLayers / P, {}, {}};
    for (int64_t l = s.begin; l < s.end; ++l) {
        s.score.emplace_back();
        s.taken.emplace_back();
        for (int64_t i = 0; i < 7; ++i) {
            s.score.back()[std::size_t(i)] = score_of(l, i);
            s.taken.back()[std::size_t(i)] = taken_of(l, i);
        }
    }
    return s;
}

int all_ranks_sum(int v) {
    int s = 0;
    MPI_Allreduce(&v, &s, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    return s;
}

TEST(Select, GlobalTopEqualsOneRank) {
    auto        world = parallel::make_mpi_transport();
    auto        self  = parallel::make_mpi_transport(true);
    const Slice mine = slice(world->rank(), world->size()), whole = slice(0, 1);
    for (bool signed_ranking : {true, false})
        for (double fraction : {0.0, 0.01, 0.1, 0.37, 0.95}) {
            const SelectOptions       o{io::SelectScope::Global, signed_ranking};
            const model::StageTensors d =
                select_top(*world, mine.score, mine.taken, fraction, o, mine.begin, kLayers);
            const model::StageTensors r =
                select_top(*self, whole.score, whole.taken, fraction, o, 0, kLayers);
            int wrong = 0;
            for (int64_t l = mine.begin; l < mine.end; ++l)
                for (std::size_t i = 0; i < 7; ++i)
                    wrong += !at::equal(d[std::size_t(l - mine.begin)][i], r[std::size_t(l)][i]);
            EXPECT_EQ(all_ranks_sum(wrong), 0) << "fraction " << fraction;
            // Exactly k, none taken, and the threshold property on the one-rank result.
            int64_t n = 0, k = 0, n_free = 0;
            float   lowest_in = 1e30f, highest_out = -1e30f;
            for (int64_t l = 0; l < kLayers; ++l)
                for (std::size_t i = 0; i < 7; ++i) {
                    const at::Tensor m = r[std::size_t(l)][i], t = taken_of(l, int64_t(i));
                    at::Tensor       s = score_of(l, int64_t(i));
                    if (!signed_ranking) s = s.abs();
                    n += s.numel();
                    n_free += s.numel() - t.sum().item<int64_t>();
                    k += m.sum().item<int64_t>();
                    EXPECT_FALSE(m.logical_and(t).any().item<bool>());
                    if (m.any().item<bool>())
                        lowest_in = std::min(lowest_in, s.masked_select(m).min().item<float>());
                    const at::Tensor out = m.logical_not().logical_and(t.logical_not());
                    if (out.any().item<bool>())
                        highest_out =
                            std::max(highest_out, s.masked_select(out).max().item<float>());
                }
            EXPECT_EQ(k, std::min(n_free, int64_t(std::llround(fraction * double(n)))));
            if (k > 0) {
                EXPECT_LE(highest_out, lowest_in);
            }
        }
}

TEST(Select, PerLinearAndRandom) {
    auto                      world = parallel::make_mpi_transport();
    const Slice               mine = slice(world->rank(), world->size()), whole = slice(0, 1);
    const model::StageTensors lin = select_top(
        *world, mine.score, mine.taken, 0.2, {io::SelectScope::Linear, true}, mine.begin, kLayers);
    const model::StageTensors ra    = select_random(mine.score, mine.taken, 0.2, mine.begin, 7);
    const model::StageTensors rw    = select_random(whole.score, whole.taken, 0.2, 0, 7);
    int                       wrong = 0;
    for (std::size_t il = 0; il < lin.size(); ++il)
        for (std::size_t i = 0; i < 7; ++i) {
            const int64_t want = std::llround(0.2 * double(mine.score[il][i].numel()));
            wrong += lin[il][i].sum().item<int64_t>() != want;
            wrong += ra[il][i].sum().item<int64_t>() != want;
            wrong += lin[il][i].logical_and(mine.taken[il][i]).any().item<bool>();
            wrong += ra[il][i].logical_and(mine.taken[il][i]).any().item<bool>();
            wrong += !at::equal(ra[il][i], rw[std::size_t(mine.begin) + il][i]);
        }
    EXPECT_EQ(all_ranks_sum(wrong), 0);
    EXPECT_EQ(masks_count(masks_or(lin, model::StageTensors{})), masks_count(lin));
}

}  // namespace
}  // namespace rq::decompose
