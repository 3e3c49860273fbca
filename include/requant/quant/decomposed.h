#pragma once
#include <ATen/core/Tensor.h>

#include "requant/quant/quantized.h"
#include "requant/quant/sparse.h"

// One linear weight as ReQuant stores it (DESIGN.md §1):
//   W_hat = dequant(dense) + outliers + significant,
// the sparse parts as fp16 CSR residuals W - dequant(dense) on their positions; and what it
// costs to store. O out_features, I in_features.

namespace rq::quant {

struct LinearQuant {
    QuantizedLinear dense;
    SparseCsr       outliers;     // values are residuals W - dequant(dense) (fp16)
    SparseCsr       significant;  // same, for the significant weights
};

// W_hat, fp32 [O, I] (each part added when present): the one reconstruction used in the run,
// on resume and in export.
at::Tensor reconstruct(const LinearQuant& q);

// Storage in bits. Full: every overhead (bit-packed codes, fp16 scales/zeros or LUTs, CSR at
// 48 bits/nnz + 32-bit row pointers); paper: the sparse parts at 48 bits/nnz only.
struct StorageBits {
    double dense = 0, sparse = 0, sparse_paper = 0, weights = 0, outliers = 0, significant = 0;
    StorageBits& operator+=(const StorageBits& o);
    double       bits_per_weight() const { return (dense + sparse) / weights; }
    double       bits_per_weight_paper() const { return (dense + sparse_paper) / weights; }
};
StorageBits storage_bits(const LinearQuant& q);

}  // namespace rq::quant
