// bench_qtip: QTIP at K bits (HYB) against GPTQ at the same bits on every linear of a model
// (issue 16's comparison): X^T X of each linear's input from the full-precision model on
// calibration text, then per linear the output proxy tr(dW H dW^T) / tr(W H W^T) of both with
// the same H, and the time. GPTQ: non-sequential, group --group (128), damp 0.01; QTIP: the
// incoherence transforms, BlockLDLQ and the tail-biting trellis of requant/quant/qtip.h (no
// fine-tuning). Linears are spread over --threads threads (one core each).
//   bench_qtip --model ../shared/models/llama-7m-en --text ../shared/data/sotu-1790-1980.txt
//              [--seqs 32] [--seq-len 256] [--bits 2] [--group 128] [--threads 2]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "bench_args.h"
#include "requant/io/dataset.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/io/tokenizer.h"
#include "requant/model/llama.h"
#include "requant/model/weights.h"
#include "requant/quant/gptq.h"
#include "requant/quant/qtip.h"
#include "requant/quant/quantized.h"

namespace {

using Clock = std::chrono::steady_clock;

// X^T X of every linear input, accumulated in fp64 as the forward passes by.
class XtxObserver : public rq::model::LinearObserver {
  public:
    void observe(int64_t layer, rq::model::LinearInput which, const at::Tensor& x) override {
        const at::Tensor r = x.reshape({-1, x.size(-1)}).to(at::kDouble);
        at::Tensor&      h = xtx[{layer, which}];
        h                  = h.defined() ? h + r.t().matmul(r) : r.t().matmul(r);
    }
    std::map<std::pair<int64_t, rq::model::LinearInput>, at::Tensor> xtx;
};

double proxy(const at::Tensor& w, const at::Tensor& w_hat, const at::Tensor& h) {
    const at::Tensor wd = w.to(at::kDouble), d = wd - w_hat.to(at::kDouble);
    return (d.matmul(h) * d).sum().item<double>() / (wd.matmul(h) * wd).sum().item<double>();
}

}  // namespace

int main(int argc, char** argv) try {
    using namespace rq;
    const bench::Args a(argc, argv,
                        {"model", "text", "seqs", "seq-len", "bits", "group", "threads"},
                        "bench_qtip --model DIR --text FILE [--seqs 32] [--seq-len 256] "
                        "[--bits 2] [--group 128] [--threads 2]");
    const std::string dir = a.str("model"), text = a.str("text");
    const int         bits = int(a.integer("bits", 2)), threads = int(a.integer("threads", 2));
    io::HfCheckpoint  ckpt(dir);
    io::TokenData     d = io::load_text_windows(text, io::Tokenizer::locate(dir),
                                                a.integer("seq-len", 256), a.integer("seqs", 32));
    model::Stage      m(ckpt.config(),
                        model::load_stage_weights(ckpt, model::whole_model(ckpt.config()), at::kFloat),
                        d.tokens.size(1));
    XtxObserver       obs;
    {
        at::NoGradGuard g;
        m.set_observer(&obs);
        for (int64_t i = 0; i < d.tokens.size(0); i += 4) {
            const at::Tensor t = d.tokens.narrow(0, i, std::min<int64_t>(4, d.tokens.size(0) - i));
            m.forward(t, t);
        }
        m.set_observer(nullptr);
    }
    std::printf("%s: X^T X from %lld x %lld tokens of %s\n", dir.c_str(),
                (long long)d.tokens.size(0), (long long)d.tokens.size(1), text.c_str());
    quant::qtip_code(bits, quant::TrellisCode::Hyb);  // HYB's table, once, before the clock

    struct Row {
        int64_t     layer;
        const char* name;
        double      gptq = 0, qtip = 0, seconds = 0;
    };
    std::vector<Row> rows;
    for (int64_t l = 0; l < ckpt.config().n_layer; ++l)
        for (model::Linear lin : model::kLinears) rows.push_back({l, model::linear_name(lin)});
    std::atomic<std::size_t> next{0};
    auto                     work = [&] {
        at::set_num_threads(1);
        for (std::size_t k; (k = next++) < rows.size();) {
            Row&                r   = rows[k];
            const model::Linear lin = model::kLinears[k % model::kNumLinears];
            const at::Tensor    w = m.weights().layers[std::size_t(r.layer)].linear(lin);
            const at::Tensor&   h = obs.xtx.at({r.layer, model::linear_input(lin)});
            quant::GptqParams   gp;
            gp.bits       = bits;
            gp.group_size = a.integer("group", 128);
            r.gptq = proxy(w, quant::dequantize(quant::gptq_quantize(w, h, gp)), h);
            const auto        t0 = Clock::now();
            quant::QtipParams qp;
            qp.sign_seed = k;
            r.qtip = proxy(w, quant::dequantize(quant::qtip_quantize(w, h, bits, qp)), h);
            r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
        }
    };
    const auto               t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int i = 0; i < threads; ++i) pool.emplace_back(work);
    for (auto& t : pool) t.join();
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    std::printf("layer linear      GPTQ %d-bit g%lld   QTIP %d-bit HYB   QTIP s\n", bits,
                (long long)a.integer("group", 128), bits);
    int better = 0;
    for (const auto& r : rows) {
        std::printf("%5lld %-10s %16.5f %16.5f %8.1f\n", (long long)r.layer, r.name, r.gptq, r.qtip,
                    r.seconds);
        better += r.qtip < r.gptq;
    }
    std::printf(
        "QTIP's proxy below GPTQ's on %d of %zu linears; all linears (GPTQ + QTIP) in "
        "%.1f s wall on %d threads\n",
        better, rows.size(), wall, threads);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "bench_qtip: %s\n", e.what());
    return 2;
}
