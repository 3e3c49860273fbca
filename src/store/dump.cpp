// One layer's quantization dumped for reference checks (requant/store/dump.h).
#include "requant/store/dump.h"

#include <ATen/ATen.h>

#include "requant/io/h5.h"
#include "requant/quant/decomposed.h"
#include "requant/quant/quantizer.h"

namespace rq::store {
namespace {

constexpr const char* kInputNames[] = {"attn", "attn_out", "mlp", "mlp_out"};  // LinearInput
constexpr const char* kRope         = "rope";  // the attention block's RoPE tables

void put(io::H5File& f, const std::string& path, const at::Tensor& t, at::ScalarType dtype) {
    if (t.defined()) f.write(path, t.detach().to(dtype).contiguous());
}

void put_dense(io::H5File& f, const std::string& g, const quant::QuantizedLinear& d) {
    put(f, g + "/codes", d.codes, at::kByte);
    put(f, g + "/scales", d.scales, at::kFloat);
    put(f, g + "/zeros", d.zeros, at::kFloat);
    put(f, g + "/lut", d.lut, at::kFloat);
    put(f, g + "/g_idx", d.g_idx, at::kInt);
    put(f, g + "/in_scale", d.in_scale, at::kFloat);
    put(f, g + "/out_scale", d.out_scale, at::kFloat);
}

}  // namespace

void write_layer_dump(const std::string& path, int64_t layer, const io::JobQuant& p,
                      const model::LayerTensors& w, const model::LayerTensors& sparse,
                      const decompose::LayerStats& stats, const decompose::LayerQuant& q) {
    io::H5File f(path, io::H5File::Mode::Create);
    for (std::size_t i = 0; i < model::kNumLinears; ++i) {
        const std::string g = std::string("/") + model::linear_name(model::kLinears[i]);
        put(f, g + "/weight", w[i], at::kFloat);
        put(f, g + "/sparse", sparse[i], at::kByte);
        if (stats.fisher) put(f, g + "/fisher", (*stats.fisher)[i], at::kFloat);
        if (p.method == io::QuantMethod::SqueezeLlm && stats.fisher) {  // its k-means++ start
            const at::Tensor m  = sparse[i];  // the method's input: sparse weights zeroed
            const at::Tensor wz = m.defined() ? w[i].masked_fill(m, 0.0) : w[i];
            const at::Tensor fz =
                m.defined() ? (*stats.fisher)[i].masked_fill(m, 0.0) : (*stats.fisher)[i];
            if (p.kmeans_init == io::KmeansInit::PlusPlus)
                put(f, g + "/lut_init", quant::squeezellm_starts(wz, fz, quant::squeeze_params(p)),
                    at::kFloat);
        }
        put_dense(f, g, q[i].dense);
        put(f, g + "/w_hat", quant::reconstruct(q[i]), at::kFloat);
    }
    for (std::size_t k = 0; k < stats.inputs.size(); ++k) {
        const std::string g = std::string("/inputs/") + kInputNames[k];
        put(f, g + "/xtx", stats.inputs[k].xtx, at::kDouble);
        put(f, g + "/abs_mean", stats.inputs[k].abs_mean, at::kFloat);
        put(f, g + "/samples", stats.inputs[k].samples, at::kFloat);
        put(f, g + "/rows", stats.inputs[k].rows, at::kFloat);
    }
    const at::Tensor& rows = stats.inputs[0].rows;
    if (stats.config != nullptr && rows.defined()) {  // what the attention block needs
        const model::RopeTables rope = model::rope_tables(*stats.config, rows.size(1), at::kFloat);
        const std::string       g    = std::string("/") + kRope;
        put(f, g + "/cos", rope.cos, at::kFloat);
        put(f, g + "/sin", rope.sin, at::kFloat);
        f.set_attr("/", "n_head", stats.config->n_head);
        f.set_attr("/", "n_head_kv", stats.config->n_head_kv);
        f.set_attr("/", "head_dim", stats.config->head_dim);
    }
    f.set_attr("/", "layer", layer);
    f.set_attr("/", "method", std::string(io::name(p.method)));
    f.set_attr("/", "bits", int64_t{p.bits});
    f.set_attr("/", "group_size", int64_t{p.group_size});
    f.set_attr("/", "damp", p.damp);
    f.set_attr("/", "act_order", int64_t{p.act_order});
    f.set_attr("/", "block_size", int64_t{p.block_size});
    f.set_attr("/", "static_groups", int64_t{p.static_groups});
    f.set_attr("/", "sequential", int64_t{p.sequential});
    f.set_attr("/", "awq_grid", int64_t{p.awq_grid});
    f.set_attr("/", "awq_samples", int64_t{p.awq_samples});
    f.set_attr("/", "awq_loss", std::string(io::name(p.awq_loss)));
    f.set_attr("/", "kmeans_iters", int64_t{p.kmeans_iters});
    f.set_attr("/", "kmeans_init", std::string(io::name(p.kmeans_init)));
    f.commit();
}

}  // namespace rq::store
