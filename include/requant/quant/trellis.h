#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

// QTIP's bitshift trellis code (PAPER.md §9.4-9.5): an L = 16-bit state, K bits per weight, V
// weights per state; each step shifts K*V new bits in,
//     s_t = ((s_{t-1} << KV) mod 2^L) | c_t,
// and the state's V values come from a fixed code (HYB: a 2^9 x 2 table indexed by a hash of
// the state; 1MAD and 3INST: arithmetic on the state, V = 1). A tile of T weights (T = 256 in
// QTIP) is T/V states; Viterbi finds the states whose values are nearest the target in squared
// error; tail-biting makes the last state's low L - KV bits equal the first state's top bits,
// so a tile packs into exactly T*K bits. S = T / V steps, G = 2^(L - KV) state groups.

namespace rq::quant {

enum class TrellisCode { Hyb, OneMad, ThreeInst };
constexpr TrellisCode kTrellisCodes[] = {TrellisCode::Hyb, TrellisCode::OneMad,
                                         TrellisCode::ThreeInst};
const char*           name(TrellisCode c);  // hyb | 1mad | 3inst (the job file's spelling)

inline constexpr int kTrellisL   = 16;
inline constexpr int kHybLutBits = 9;  // Q: the HYB table has 2^Q rows of V = 2 values

// HYB's table, float [2^Q, 2]: seeded k-means (Lloyd, `iters` rounds) of `n_points` 2-D
// standard normal points into 2^Q centres, rescaled to standard deviation 0.9682458 (QTIP's
// initialisation, made deterministic: the reference runs scipy's k-means from a random start).
// Plain double arithmetic, no BLAS: the same table on every machine. hyb_table finds each
// point's nearest centre by a pruned search over centres sorted by one coordinate;
// hyb_table_ref tries every centre; both give the same bits.
at::Tensor hyb_table(uint64_t seed, int64_t n_points = int64_t{1} << 20, int iters = 30);
at::Tensor hyb_table_ref(uint64_t seed, int64_t n_points = int64_t{1} << 20, int iters = 30);

class BitshiftTrellis {
  public:
    // K in 1..4; `hyb` is HYB's table (float [2^Q, 2]) for TrellisCode::Hyb, else ignored.
    BitshiftTrellis(int K, TrellisCode code, const at::Tensor& hyb = at::Tensor());

    int K() const { return K_; }
    int V() const { return V_; }
    int KV() const { return K_ * V_; }

    // The V values of state s.
    float value(uint32_t s, int v) const { return values_[std::size_t(v) * kStates + s]; }

    // The best state sequence for the target x[0, T) (T a multiple of V): states[0, T/V).
    // overlap >= 0 constrains the first state's top L - KV bits and the last state's low
    // L - KV bits to `overlap` (tail-biting's second pass); -1 leaves them free. Ties go to the
    // smallest predecessor. viterbi: vectorised over the 2^L states; viterbi_ref: plain scalar
    // loops, the same arithmetic, bitwise the same states.
    void viterbi(const float* x, int T, int overlap, uint16_t* states) const;
    void viterbi_ref(const float* x, int T, int overlap, uint16_t* states) const;

    // Tail-biting Viterbi (two passes, §9.4): the target rotated by half a tile picks the
    // overlap, then the tile is solved under it. The target is rounded to fp16 first, as the
    // reference does. Returns T/V states.
    std::vector<uint16_t> quantize_tile(const float* x, int T) const;

    // Exactly T*K bits per tile in 16-bit words, most significant bit first: the first state's
    // L bits, then KV bits per later step, less the last L - KV bits (the first state's top
    // bits, implied by tail-biting). unpack inverts it for tail-biting state sequences.
    std::vector<uint16_t> pack(const uint16_t* states, int T) const;
    std::vector<uint16_t> unpack(const uint16_t* words, int T) const;
    // Weight j of a packed tile, read straight from the bits (O(1): one state's L bits).
    float decode(const uint16_t* words, int T, int j) const;

  private:
    static constexpr uint32_t kStates = uint32_t{1} << kTrellisL;
    int                       K_, V_;
    std::vector<float>        values_;  // [V][2^L]
};

}  // namespace rq::quant
