// A decomposed linear: reconstruction and storage (requant/quant/decomposed.h).
#include "requant/quant/decomposed.h"

#include <ATen/ATen.h>

namespace rq::quant {

at::Tensor reconstruct(const LinearQuant& q) {
    at::Tensor w = dequantize(q.dense);
    if (q.outliers.indptr.defined()) w = w + csr_to_dense(q.outliers);
    if (q.significant.indptr.defined()) w = w + csr_to_dense(q.significant);
    return w;
}

StorageBits& StorageBits::operator+=(const StorageBits& o) {
    dense += o.dense, sparse += o.sparse, sparse_paper += o.sparse_paper;
    weights += o.weights, outliers += o.outliers, significant += o.significant;
    return *this;
}

StorageBits storage_bits(const LinearQuant& q) {
    StorageBits b;
    b.dense        = double(dense_storage_bits(q.dense));
    b.weights      = double(q.dense.out_features() * q.dense.in_features());
    b.sparse       = double(csr_storage_bits(q.outliers) + csr_storage_bits(q.significant));
    b.sparse_paper = double(csr_paper_bits(q.outliers) + csr_paper_bits(q.significant));
    b.outliers     = double(q.outliers.nnz());
    b.significant  = double(q.significant.nnz());
    return b;
}

}  // namespace rq::quant
