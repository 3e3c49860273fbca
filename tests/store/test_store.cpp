// Run-directory state and the final checkpoint (requant/store/state.h, checkpoint.h): a
// layer's decomposition (uniform and LUT dense parts, 3- and 4-bit codes on widths that are not
// a multiple of 32, g_idx, in_scale, outlier and significant CSR parts, empty ones too) comes
// back from its layer file bit for bit; a missing, foreign, truncated or damaged layer file reads
// as nullopt and never as a different decomposition; detach masks round trip; storage_bits of a
// layer is the sum over its linears; and on the bundled stories260k, model.requant.h5 and its HF
// export hold exactly W_hat = reconstruct(...) for every linear and the source tensors for the
// rest. Not tested here: run.h5 and the fingerprint (phases tests), read_detach_rounds (MPI).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "../common/shared_dir.h"
#include "requant/decompose/layer.h"
#include "requant/error.h"
#include "requant/io/h5.h"
#include "requant/io/hf_checkpoint.h"
#include "requant/io/safetensors.h"
#include "requant/model/weights.h"
#include "requant/quant/bitpack.h"
#include "requant/quant/decomposed.h"
#include "requant/quant/qtip.h"
#include "requant/quant/rtn.h"
#include "requant/quant/sparse.h"
#include "requant/quant/squeezellm.h"
#include "requant/store/checkpoint.h"
#include "requant/store/state.h"
#include "requant/units.h"

namespace rq::store {
namespace {

namespace fs = std::filesystem;
using decompose::LayerQuant;
using model::kLinears;
using model::kNumLinears;

const std::string kFp      = "fingerprint-of-this-run";
const std::string kOtherFp = "fingerprint-of-another-run";
const std::string kModel   = "models/stories260k";
// Synthetic layer: C = 100 and F = 40 (in_features of every linear not a multiple of 32),
// H*D = 64, Hkv*D = 32. [O, I] per linear in kLinears order.
const std::array<std::array<int64_t, 2>, kNumLinears> kShapes = {
    {{64, 100}, {32, 100}, {32, 100}, {100, 64}, {40, 100}, {40, 100}, {100, 40}}};
constexpr int64_t kLayer = 3;  // the layer index the synthetic layer is stored under

// A fresh folder under the system temp directory, removed with everything in it at the end.
class TempDir {
  public:
    TempDir() {
        static std::atomic<int> n{0};
        path_ = fs::temp_directory_path() /
                ("rq-test-store-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&)               = delete;
    TempDir&    operator=(const TempDir&) = delete;
    std::string str() const { return path_.string(); }
    std::string sub(const std::string& name) const { return (path_ / name).string(); }

  private:
    fs::path path_;
};

std::string read_bytes(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
void write_bytes(const std::string& p, const std::string& b) {
    std::ofstream(p, std::ios::binary | std::ios::trunc).write(b.data(), std::streamsize(b.size()));
}
std::string tensor_bytes(const at::Tensor& t) {
    const at::Tensor c = t.contiguous();
    return std::string(static_cast<const char*>(c.data_ptr()), std::size_t(c.nbytes()));
}

// libhdf5 (1.10.8) loses object-header and metadata-cache blocks when it fails to load an
// object from a damaged file: LeakSanitizer (launch/test.sh --sanitize) reports them. A
// damaged-file test holds this while it reads damaged files, so that those allocations, made
// inside libhdf5 on its error paths, are not reported; every allocation of ours, and
// everything the valid files cost, still is.
#if defined(__SANITIZE_ADDRESS__)
// Without its free lists, a block libhdf5 loses was allocated by the call that lost it.
const bool  kNoFreeLists = (io::h5_disable_free_lists(), true);
inline void leak_checks(bool on) {
    on ? __lsan_enable() : __lsan_disable();
}
#else
inline void leak_checks(bool) {}
#endif
class HdfDamagedReads {
  public:
    HdfDamagedReads() { leak_checks(false); }
    ~HdfDamagedReads() { leak_checks(true); }
};

// Silences the "damaged; redoing its work" warnings of a test that provokes many of them.
class QuietLog {
  public:
    QuietLog() : level_(spdlog::get_level()) { spdlog::set_level(spdlog::level::off); }
    ~QuietLog() { spdlog::set_level(level_); }

  private:
    spdlog::level::level_enum level_;
};

// float [O, I] with trained-model-like magnitudes.
model::LayerTensors random_linears(uint64_t seed) {
    auto                gen = at::detail::createCPUGenerator(seed);
    model::LayerTensors w;
    for (std::size_t i = 0; i < kNumLinears; ++i)
        w[i] = at::randn({kShapes[i][0], kShapes[i][1]}, gen) * 0.02;
    return w;
}

// Outliers: the 1% largest |w|; significant: 2% at random among the rest. Linear `empty_at`
// gets an all-false outlier mask (an empty but present CSR).
void sparse_masks(const model::LayerTensors& w, uint64_t seed, std::size_t empty_at,
                  model::LayerTensors& outliers, model::LayerTensors& significant) {
    auto gen = at::detail::createCPUGenerator(seed);
    for (std::size_t i = 0; i < kNumLinears; ++i) {
        outliers[i]            = i == empty_at ? at::zeros(w[i].sizes(), at::kBool)
                                               : quant::topk_mask(w[i].abs(), w[i].numel() / 100);
        const at::Tensor score = at::rand(w[i].sizes(), gen).masked_fill(outliers[i], -1.0);
        significant[i]         = quant::topk_mask(score, w[i].numel() / 50);
    }
}

// The uniform case through decompose::quantize_weights: RTN `bits`-bit, G = 32, both sparse
// parts; `w_hat` gets what quantize_weights reports as W_hat.
LayerQuant rtn_layer(int bits, model::LayerTensors& w_hat) {
    const model::LayerTensors w = random_linears(11);
    model::LayerTensors       om, sm;
    sparse_masks(w, 12, 2, om, sm);
    io::JobQuant p;
    p.method     = io::QuantMethod::Rtn;
    p.bits       = bits;
    p.group_size = 32;
    return decompose::quantize_weights(w, kLayer, decompose::LayerStats{}, &om, &sm, p, w_hat);
}

// The LUT case built by hand: SqueezeLLM 3-bit with random Fisher weights, outliers on all but
// one linear, no significant part; linear 1 carries an explicit g_idx and linear 5 an in_scale
// and an out_scale, which the file must keep as well.
LayerQuant lut_layer() {
    const model::LayerTensors w   = random_linears(21);
    auto                      gen = at::detail::createCPUGenerator(22);
    LayerQuant                q;
    for (std::size_t i = 0; i < kNumLinears; ++i) {
        const at::Tensor           fisher = at::rand(w[i].sizes(), gen);
        const at::Tensor           mask   = quant::topk_mask(w[i].abs(), w[i].numel() / 100);
        const quant::SqueezeParams sp{3, 10};  // 3-bit, 10 Lloyd iterations
        q[i].dense = quant::squeezellm_quantize(w[i].masked_fill(mask, 0.0),
                                                fisher.masked_fill(mask, 0.0), sp);
        if (i != 4)
            q[i].outliers = quant::csr_from_mask(w[i] - quant::dequantize(q[i].dense), mask);
    }
    const int64_t I1 = kShapes[1][1];
    q[1].dense.g_idx = at::randperm(I1, gen, at::kLong).remainder(4).to(at::kInt);
    q[5].dense.in_scale =
        (at::rand({kShapes[5][1]}, gen) + 0.5).to(at::kHalf);  // AWQ-like scales in [0.5, 1.5)
    q[5].dense.out_scale = (at::rand({kShapes[5][0]}, gen) + 0.5).to(at::kHalf);
    return q;
}

// Both defined with equal dtype, shape and bytes, or both undefined.
void expect_same_tensor(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
    ASSERT_EQ(a.defined(), b.defined())
        << what << ": defined " << a.defined() << " vs " << b.defined();
    if (!a.defined()) return;
    ASSERT_EQ(a.scalar_type(), b.scalar_type()) << what;
    ASSERT_EQ(a.sizes(), b.sizes()) << what;
    EXPECT_TRUE(at::equal(a, b)) << what << ": values differ";
}

void expect_same_csr(const quant::SparseCsr& a, const quant::SparseCsr& b,
                     const std::string& what) {
    EXPECT_EQ(a.rows, b.rows) << what;
    EXPECT_EQ(a.cols, b.cols) << what;
    expect_same_tensor(a.indptr, b.indptr, what + "/indptr");
    expect_same_tensor(a.indices, b.indices, what + "/indices");
    expect_same_tensor(a.values, b.values, what + "/values");
}

// Every field of every linear equal, and so every reconstruction equal bit for bit.
void expect_same_layer(const LayerQuant& a, const LayerQuant& b) {
    for (std::size_t i = 0; i < kNumLinears; ++i) {
        const std::string n = model::linear_name(kLinears[i]);
        const auto&       x = a[i].dense;
        const auto&       y = b[i].dense;
        EXPECT_EQ(x.bits, y.bits) << n;
        EXPECT_EQ(x.group_size, y.group_size) << n;
        expect_same_tensor(x.codes, y.codes, n + "/codes");
        expect_same_tensor(x.scales, y.scales, n + "/scales");
        expect_same_tensor(x.zeros, y.zeros, n + "/zeros");
        expect_same_tensor(x.lut, y.lut, n + "/lut");
        expect_same_tensor(x.g_idx, y.g_idx, n + "/g_idx");
        expect_same_tensor(x.in_scale, y.in_scale, n + "/in_scale");
        expect_same_tensor(x.out_scale, y.out_scale, n + "/out_scale");
        expect_same_csr(a[i].outliers, b[i].outliers, n + "/outliers");
        expect_same_csr(a[i].significant, b[i].significant, n + "/significant");
        EXPECT_TRUE(at::equal(quant::reconstruct(a[i]), quant::reconstruct(b[i])))
            << n << ": reconstruction differs";
    }
}

// How two tensors (or numbers) differ, "" if they do not.
std::string difference(const at::Tensor& a, const at::Tensor& b) {
    if (a.defined() != b.defined()) return "defined vs undefined";
    if (!a.defined()) return "";
    if (a.scalar_type() != b.scalar_type()) return "dtype";
    if (a.sizes() != b.sizes()) return "shape";
    return at::equal(a, b) ? "" : "values";
}
std::string difference(int64_t a, int64_t b) {
    return a == b ? "" : std::to_string(a) + " vs " + std::to_string(b);
}
// The first field in which two layers differ ("k_proj/group_size: 32 vs 33"), "" if none;
// without gtest output (for the byte sweep).
std::string layer_difference(const LayerQuant& a, const LayerQuant& b) {
    for (std::size_t i = 0; i < kNumLinears; ++i) {
        const auto&                                      x      = a[i].dense;
        const auto&                                      y      = b[i].dense;
        std::vector<std::pair<std::string, std::string>> fields = {
            {"bits", difference(x.bits, y.bits)},
            {"group_size", difference(x.group_size, y.group_size)},
            {"codes", difference(x.codes, y.codes)},
            {"scales", difference(x.scales, y.scales)},
            {"zeros", difference(x.zeros, y.zeros)},
            {"lut", difference(x.lut, y.lut)},
            {"g_idx", difference(x.g_idx, y.g_idx)},
            {"in_scale", difference(x.in_scale, y.in_scale)},
            {"out_scale", difference(x.out_scale, y.out_scale)}};
        for (const auto& [part, u, v] :
             {std::make_tuple("outliers", a[i].outliers, b[i].outliers),
              std::make_tuple("significant", a[i].significant, b[i].significant)}) {
            const std::string g = std::string(part) + "/";
            fields.push_back({g + "rows", difference(u.rows, v.rows)});
            fields.push_back({g + "cols", difference(u.cols, v.cols)});
            fields.push_back({g + "indptr", difference(u.indptr, v.indptr)});
            fields.push_back({g + "indices", difference(u.indices, v.indices)});
            fields.push_back({g + "values", difference(u.values, v.values)});
        }
        for (const auto& [field, d] : fields)
            if (!d.empty())
                return std::string(model::linear_name(kLinears[i])) + "/" + field + ": " + d;
    }
    return "";
}

// What a layer read back does to W_hat: which linears reconstruct differently or throw.
std::string w_hat_outcome(const LayerQuant& q, const model::LayerTensors& w_hat) {
    std::string out;
    for (std::size_t i = 0; i < kNumLinears; ++i) {
        std::string what;
        try {
            const at::Tensor r = quant::reconstruct(q[i]);
            if (r.sizes() != w_hat[i].sizes()) {
                std::ostringstream o;
                o << "W_hat of shape " << r.sizes();
                what = o.str();
            } else if (!at::equal(r, w_hat[i])) {
                what = "W_hat differs";
            }
        } catch (const std::exception&) {
            what = "reconstruct throws";
        }
        if (!what.empty())
            out += (out.empty() ? "" : ", ") + what + " (" + model::linear_name(kLinears[i]) + ")";
    }
    return out.empty() ? "W_hat unchanged" : out;
}

TEST(StoreLayerState, RtnRoundTripIsBitExact) {
    for (const int bits : {3, 4}) {
        SCOPED_TRACE("RTN " + std::to_string(bits) + "-bit g32");
        model::LayerTensors w_hat;
        const LayerQuant    q = rtn_layer(bits, w_hat);
        TempDir             d;
        write_layer_state(d.str(), kLayer, q, kFp);
        EXPECT_TRUE(fs::exists(layer_state_path(d.str(), kLayer)));
        EXPECT_FALSE(fs::exists(layer_state_path(d.str(), kLayer) + ".tmp"));
        const auto back = read_layer_state(d.str(), kLayer, kFp);
        ASSERT_TRUE(back.has_value());
        expect_same_layer(q, *back);
        for (std::size_t i = 0; i < kNumLinears; ++i) {
            EXPECT_EQ((*back)[i].dense.bits, bits);
            EXPECT_FALSE((*back)[i].dense.is_lut());
            EXPECT_TRUE(at::equal(quant::reconstruct((*back)[i]), w_hat[i]))
                << model::linear_name(kLinears[i]) << ": not the W_hat the run used";
        }
        // The empty outlier part stays present and empty; the others hold their weights.
        EXPECT_EQ((*back)[2].outliers.nnz(), 0);
        EXPECT_TRUE((*back)[2].outliers.indptr.defined());
        EXPECT_EQ((*back)[0].outliers.nnz(), q[0].outliers.nnz());
        EXPECT_GT((*back)[0].significant.nnz(), 0);
    }
}

// Writes q as layer kLayer's state and reads it back, expecting every field equal; an empty
// layer (and a failure) when it does not read back.
LayerQuant round_trip(const LayerQuant& q) {
    TempDir d;
    write_layer_state(d.str(), kLayer, q, kFp);
    const auto back = read_layer_state(d.str(), kLayer, kFp);
    EXPECT_TRUE(back.has_value());
    if (!back) return {};
    expect_same_layer(q, *back);
    return *back;
}

TEST(StoreLayerState, LutRoundTripIsBitExact) {
    const LayerQuant back = round_trip(lut_layer());
    for (std::size_t i = 0; i < kNumLinears; ++i) {
        EXPECT_TRUE(back[i].dense.is_lut()) << i;
        EXPECT_FALSE(back[i].significant.indptr.defined()) << "absent parts stay absent";
    }
    EXPECT_FALSE(back[4].outliers.indptr.defined());
    EXPECT_TRUE(back[1].dense.g_idx.defined());
    EXPECT_TRUE(back[5].dense.in_scale.defined());
    EXPECT_TRUE(back[5].dense.out_scale.defined());
}

// QTIP's linears (1MAD: no table to compute; 100 and 40 are padded to 112 and 48): trellis
// words, sign vectors, Wscale, code and factor seed come back exactly, with their sparse parts.
TEST(StoreLayerState, TrellisRoundTripIsBitExact) {
    const model::LayerTensors w = random_linears(11);
    LayerQuant                q;
    for (std::size_t i = 0; i < kNumLinears; ++i) {
        const at::Tensor  x = at::randn({2 * kShapes[i][1], kShapes[i][1]});
        quant::QtipParams p;
        p.code           = quant::TrellisCode::OneMad;
        p.sign_seed      = i;
        p.factor_seed    = 5;
        q[i].dense       = quant::qtip_quantize(w[i], x.t().matmul(x), 2, p);
        const auto res   = w[i] - quant::dequantize(q[i].dense);
        q[i].significant = quant::csr_from_mask(res, res.abs() > res.abs().quantile(0.99));
    }
    const LayerQuant back = round_trip(q);
    for (std::size_t i = 0; i < kNumLinears; ++i) {
        const quant::TrellisDense &a = q[i].dense.trellis, &b = back[i].dense.trellis;
        ASSERT_TRUE(back[i].dense.is_trellis()) << i;
        EXPECT_TRUE(at::equal(a.words, b.words)) << i;
        EXPECT_TRUE(at::equal(a.signs_rows, b.signs_rows)) << i;
        EXPECT_TRUE(at::equal(a.signs_cols, b.signs_cols)) << i;
        EXPECT_EQ(a.wscale, b.wscale) << i;
        EXPECT_EQ(a.factor_seed, b.factor_seed) << i;
        EXPECT_EQ(b.code, quant::TrellisCode::OneMad) << i;
        EXPECT_EQ(back[i].dense.out_features(), kShapes[i][0]) << i;
    }
}

TEST(StoreLayerState, RewriteReplacesTheFile) {
    model::LayerTensors w_hat;
    const LayerQuant    a = rtn_layer(4, w_hat);
    const LayerQuant    b = lut_layer();
    TempDir             d;
    write_layer_state(d.str(), kLayer, a, kFp);
    write_layer_state(d.str(), kLayer, b, kFp);  // the layer redone
    const auto back = read_layer_state(d.str(), kLayer, kFp);
    ASSERT_TRUE(back.has_value());
    expect_same_layer(b, *back);
}

TEST(StoreLayerState, MissingForeignOrTruncatedIsNullopt) {
    QuietLog            quiet;
    model::LayerTensors w_hat;
    const LayerQuant    q = rtn_layer(3, w_hat);
    TempDir             d;
    EXPECT_FALSE(read_layer_state(d.str(), kLayer, kFp).has_value()) << "no layers folder";
    write_layer_state(d.str(), kLayer, q, kFp);
    const std::string p = layer_state_path(d.str(), kLayer);
    EXPECT_FALSE(read_layer_state(d.str(), kLayer + 1, kFp).has_value()) << "missing file";
    EXPECT_FALSE(read_layer_state(d.str(), kLayer, kOtherFp).has_value()) << "other run";
    EXPECT_FALSE(read_layer_state(d.str(), kLayer, "").has_value()) << "empty fingerprint";
    // Layer 3's file under layer 4's name holds another layer.
    fs::copy_file(p, layer_state_path(d.str(), kLayer + 1));
    EXPECT_FALSE(read_layer_state(d.str(), kLayer + 1, kFp).has_value()) << "another layer";
    // A detach file is not a layer file, even at the layer file's name.
    model::LayerTensors masks;
    for (std::size_t i = 0; i < kNumLinears; ++i)
        masks[i] = at::zeros({kShapes[i][0], kShapes[i][1]}, at::kBool);
    write_detach_state(d.str(), kLayer + 2, 1, masks, kFp);
    fs::copy_file(detach_state_path(d.str(), kLayer + 2, 1), layer_state_path(d.str(), kLayer + 2));
    EXPECT_FALSE(read_layer_state(d.str(), kLayer + 2, kFp).has_value()) << "a detach file";
    // Not HDF5 at all.
    write_bytes(layer_state_path(d.str(), kLayer + 3), "not an HDF5 file");
    EXPECT_FALSE(read_layer_state(d.str(), kLayer + 3, kFp).has_value()) << "text file";
    write_bytes(layer_state_path(d.str(), kLayer + 4), "");
    EXPECT_FALSE(read_layer_state(d.str(), kLayer + 4, kFp).has_value()) << "empty file";
    // Cut to half, as a crash during a copy would leave it.
    const auto size = fs::file_size(p);
    fs::resize_file(p, size / 2);
    EXPECT_FALSE(read_layer_state(d.str(), kLayer, kFp).has_value()) << "truncated to half";
    fs::resize_file(p, 0);
    EXPECT_FALSE(read_layer_state(d.str(), kLayer, kFp).has_value()) << "truncated to 0";
}

// A 3-bit RTN layer written to a fresh run folder: the damaged-file tests start from it.
class WrittenLayer : public ::testing::Test {
  protected:
    void SetUp() override { write_layer_state(d.str(), kLayer, q, kFp); }

    QuietLog            quiet;
    model::LayerTensors w_hat;
    const LayerQuant    q = rtn_layer(3, w_hat);
    TempDir             d;
    const std::string   p = layer_state_path(d.str(), kLayer);
};

TEST_F(WrittenLayer, FlippedByteInDatasetIsNullopt) {
    const std::string good = read_bytes(p);
    // Each dataset's bytes are found by their content; one byte in their middle is flipped.
    const std::vector<std::pair<std::string, at::Tensor>> datasets = {
        {"q_proj/codes", quant::pack_codes(q[0].dense.codes, q[0].dense.bits)},
        {"down_proj/codes", quant::pack_codes(q[6].dense.codes, q[6].dense.bits)},
        {"k_proj/scales", q[1].dense.scales},
        {"o_proj/zeros", q[3].dense.zeros},
        {"up_proj/outliers/values", q[5].outliers.values},
        {"gate_proj/significant/indices", q[4].significant.indices},
        {"v_proj/significant/indptr", q[2].significant.indptr}};
    for (const auto& [name, t] : datasets) {
        const std::string needle = tensor_bytes(t);
        const auto        at     = good.find(needle);
        ASSERT_NE(at, std::string::npos) << name << ": bytes not found in " << p;
        ASSERT_EQ(good.find(needle, at + 1), std::string::npos) << name << ": not unique";
        std::string bad = good;
        bad[at + needle.size() / 2] ^= 0x01;
        write_bytes(p, bad);
        EXPECT_FALSE(read_layer_state(d.str(), kLayer, kFp).has_value())
            << name << ": a flipped bit inside the dataset was not caught";
    }
    write_bytes(p, good);
    const auto back = read_layer_state(d.str(), kLayer, kFp);
    ASSERT_TRUE(back.has_value()) << "the restored file reads again";
    expect_same_layer(q, *back);
}

// The middle byte of the file damaged (every bit of it, one at a time): the layer reads back
// either as nullopt or as exactly what was written.
TEST_F(WrittenLayer, FlippedMiddleByteIsNulloptOrHarmless) {
    const HdfDamagedReads damaged;
    const std::string     good = read_bytes(p);
    for (int bit = 0; bit < 8; ++bit) {
        std::string bad = good;
        bad[good.size() / 2] ^= char(1 << bit);
        write_bytes(p, bad);
        const auto back = read_layer_state(d.str(), kLayer, kFp);
        if (back) {
            EXPECT_EQ(layer_difference(q, *back), "") << "bit " << bit;
        }
    }
}

// The metadata read_layer_quant relies on, damaged one item at a time: nullopt, or exactly what
// was written (HDF5 file format 1.8+ checksums every object header). (1) One bit of the value
// of every int64 attribute bits, group_size, rows, cols, found as the first 8 bytes after the
// attribute's name that hold one of the values written under it. (2) One bit of the first letter
// of every occurrence of the link name of an optional part (the groups outliers and
// significant, the datasets values).
TEST_F(WrittenLayer, FlippedAttributeOrNameIsNulloptOrHarmless) {
    const HdfDamagedReads                    damaged;
    const std::string                        good = read_bytes(p);
    std::map<std::string, std::set<int64_t>> written;  // attribute name -> values
    for (const auto& l : q) {
        written["bits"].insert(l.dense.bits);
        written["group_size"].insert(l.dense.group_size);
        written["rows"].insert(l.dense.out_features());
        written["cols"].insert(l.dense.in_features());
    }
    std::vector<std::string> wrong;
    for (const auto& [name, values] : written) {
        const std::string key     = name + '\0';
        int64_t           n_found = 0;
        for (auto a = good.find(key); a != std::string::npos; a = good.find(key, a + 1)) {
            std::size_t v = std::string::npos;
            for (std::size_t o = a + key.size(); o + 8 <= std::min(good.size(), a + 96); ++o) {
                int64_t x = 0;
                std::memcpy(&x, good.data() + o, 8);
                if (values.count(x)) {
                    v = o;
                    break;
                }
            }
            if (v == std::string::npos) continue;
            ++n_found;
            std::string bad = good;
            bad[v] ^= 0x01;
            write_bytes(p, bad);
            const auto back = read_layer_state(d.str(), kLayer, kFp);
            if (!back) continue;
            const std::string diff = layer_difference(q, *back);
            if (!diff.empty())
                wrong.push_back("attribute " + name + " at byte " + std::to_string(v) + " -> " +
                                diff + "; " + w_hat_outcome(*back, w_hat));
        }
        EXPECT_GT(n_found, 0) << "no value of attribute " << name << " found in " << p;
    }
    for (const std::string name : {"outliers", "significant", "values"}) {
        // Link messages of file format 1.8+ store names by length, without a terminator.
        const std::string key     = name;
        int64_t           n_found = 0;
        for (auto a = good.find(key); a != std::string::npos; a = good.find(key, a + 1)) {
            ++n_found;
            std::string bad = good;
            bad[a] ^= 0x01;
            write_bytes(p, bad);
            const auto back = read_layer_state(d.str(), kLayer, kFp);
            if (!back) continue;
            const std::string diff = layer_difference(q, *back);
            if (!diff.empty())
                wrong.push_back("name " + name + " at byte " + std::to_string(a) + " -> " + diff +
                                "; " + w_hat_outcome(*back, w_hat));
        }
        EXPECT_GT(n_found, 0) << "link name " << name << " not found in " << p;
    }
    std::ostringstream list;
    for (const auto& w : wrong) list << "\n  " << w;
    EXPECT_TRUE(wrong.empty())
        << wrong.size()
        << " damaged attributes or names read back as a different LayerQuant:" << list.str();
}

// Any single damaged bit: the same over a sweep of the whole file, headers and attributes
// included (state.h: a damaged file is "redone, never used").
TEST_F(WrittenLayer, FlippedByteAnywhereIsNulloptOrHarmless) {
    const HdfDamagedReads    damaged;
    const std::string        good = read_bytes(p);
    const std::size_t        n    = good.size();
    std::vector<std::size_t> positions;
    constexpr std::size_t    kProbes = 300;  // bounds the run time (~5-20 ms per read)
    for (std::size_t k = 0; k < kProbes; ++k) positions.push_back(k * n / kProbes);
    int64_t                  n_null = 0, n_same = 0;
    std::vector<std::string> wrong;  // "offset: first difference" of each silent change
    for (const std::size_t at : positions) {
        std::string bad = good;
        bad[at] ^= 0x01;
        write_bytes(p, bad);
        const auto back = read_layer_state(d.str(), kLayer, kFp);
        if (!back) {
            ++n_null;
            continue;
        }
        const std::string diff = layer_difference(q, *back);
        if (diff.empty())
            ++n_same;
        else
            wrong.push_back("byte " + std::to_string(at) + " -> " + diff + "; " +
                            w_hat_outcome(*back, w_hat));
    }
    std::printf("file %zu bytes, %zu single-bit flips: %lld nullopt, %lld unchanged, %zu changed\n",
                n, positions.size(), (long long)n_null, (long long)n_same, wrong.size());
    std::ostringstream list;
    for (const auto& w : wrong) list << "\n  " << w;
    EXPECT_TRUE(wrong.empty()) << wrong.size() << " of " << positions.size()
                               << " single-bit flips read back as a different LayerQuant:"
                               << list.str();
    EXPECT_GT(n_null, 0);
}

TEST(StoreDetachState, BoolMasksRoundTrip) {
    QuietLog            quiet;
    auto                gen = at::detail::createCPUGenerator(31);
    TempDir             d;
    model::LayerTensors picked;
    for (std::size_t i = 0; i < kNumLinears; ++i)
        picked[i] = at::rand({kShapes[i][0], kShapes[i][1]}, gen) < 0.05;
    picked[1].zero_();                     // nothing picked
    picked[3].fill_(true);                 // everything picked
    picked[6][0].fill_(true);              // one full row
    picked[6][kShapes[6][0] - 1].zero_();  // the last row empty
    constexpr int64_t kDetachLayer = 2;
    constexpr int     kRound       = 7;
    write_detach_state(d.str(), kDetachLayer, kRound, picked, kFp);
    const auto back = read_detach_state(d.str(), kDetachLayer, kRound, kFp);
    ASSERT_TRUE(back.has_value());
    for (std::size_t i = 0; i < kNumLinears; ++i) {
        const std::string n = model::linear_name(kLinears[i]);
        ASSERT_TRUE((*back)[i].defined()) << n;
        EXPECT_EQ((*back)[i].scalar_type(), at::kBool) << n;
        EXPECT_EQ((*back)[i].sizes(), picked[i].sizes()) << n;
        EXPECT_TRUE(at::equal((*back)[i], picked[i])) << n;
    }
    EXPECT_FALSE(read_detach_state(d.str(), kDetachLayer, kRound + 1, kFp)) << "other round";
    EXPECT_FALSE(read_detach_state(d.str(), kDetachLayer + 1, kRound, kFp)) << "other layer";
    EXPECT_FALSE(read_detach_state(d.str(), kDetachLayer, kRound, kOtherFp)) << "other run";
    const std::string p = detach_state_path(d.str(), kDetachLayer, kRound);
    fs::copy_file(p, detach_state_path(d.str(), kDetachLayer, kRound + 1));
    EXPECT_FALSE(read_detach_state(d.str(), kDetachLayer, kRound + 1, kFp))
        << "a file holding another round";
    fs::resize_file(p, fs::file_size(p) / 2);
    EXPECT_FALSE(read_detach_state(d.str(), kDetachLayer, kRound, kFp)) << "truncated";
}

TEST(StoreCheckpoint, StorageBitsIsTheSumOverLinears) {
    model::LayerTensors w_hat;
    for (const LayerQuant& q : {rtn_layer(3, w_hat), lut_layer()}) {
        quant::StorageBits sum;
        int64_t            n_weights = 0;
        for (std::size_t i = 0; i < kNumLinears; ++i) {
            const quant::StorageBits b = quant::storage_bits(q[i]);
            sum.dense += b.dense;
            sum.sparse += b.sparse;
            sum.sparse_paper += b.sparse_paper;
            sum.weights += b.weights;
            sum.outliers += b.outliers;
            sum.significant += b.significant;
            n_weights += kShapes[i][0] * kShapes[i][1];
        }
        const quant::StorageBits s = storage_bits(q);
        EXPECT_EQ(s.dense, sum.dense);
        EXPECT_EQ(s.sparse, sum.sparse);
        EXPECT_EQ(s.sparse_paper, sum.sparse_paper);
        EXPECT_EQ(s.outliers, sum.outliers);
        EXPECT_EQ(s.significant, sum.significant);
        EXPECT_EQ(s.weights, sum.weights);
        EXPECT_EQ(s.weights, double(n_weights));
        EXPECT_GT(s.dense, 0);
        EXPECT_EQ(s.bits_per_weight(), (sum.dense + sum.sparse) / sum.weights);
    }
}

// A finished run on stories260k, made by hand: every layer RTN 4-bit g32 with 1% outliers,
// its layer file, model.requant.h5; kept for the export tests.
struct BundledRun {
    TempDir                          dir;
    std::string                      out;
    io::HfCheckpoint                 ckpt;
    int64_t                          n_layer = 0;
    std::vector<LayerQuant>          q;      // [layer]
    std::vector<model::LayerTensors> w_hat;  // [layer][kLinears]
    quant::StorageBits               total;
    nlohmann::json                   root;

    BundledRun() : out(dir.sub("run")), ckpt(test::shared_path(kModel)) {
        n_layer = ckpt.config().n_layer;
        const model::StageWeights sw =
            model::load_stage_weights(ckpt, model::whole_model(ckpt.config()), at::kFloat);
        io::JobQuant p;
        p.method     = io::QuantMethod::Rtn;
        p.bits       = 4;
        p.group_size = 32;
        for (int64_t l = 0; l < n_layer; ++l) {
            model::LayerTensors w, om, wh;
            for (std::size_t i = 0; i < kNumLinears; ++i) {
                w[i]  = sw.layers[std::size_t(l)].linear(kLinears[i]);
                om[i] = quant::topk_mask(w[i].abs(), w[i].numel() / 100);
            }
            q.push_back(
                decompose::quantize_weights(w, l, decompose::LayerStats{}, &om, nullptr, p, wh));
            w_hat.push_back(wh);
            total += storage_bits(q.back());
            write_layer_state(out, l, q.back(), kFp);
        }
        // As phases::assemble passes them: linears as stored, every other tensor at 16 bits.
        const double other  = double(io::n_params(ckpt.config())) - total.weights;
        const double memory = (total.dense + total.sparse + 16 * other) / (8 * kGiB);
        root                = {{"method", "rtn"},
                               {"bits", int64_t(4)},
                               {"group_size", int64_t(32)},
                               {"bits_per_weight", total.bits_per_weight()},
                               {"bits_per_weight_paper", total.bits_per_weight_paper()},
                               {"linear_weights", total.weights},
                               {"outliers", total.outliers},
                               {"significant", total.significant},
                               {"memory_gib", memory}};
        write_final_checkpoint(out, n_layer, ckpt, kFp, root);
    }
};

BundledRun& bundled_run() {
    static BundledRun run;
    return run;
}

// The tensors of an exported folder's model.safetensors, by name.
std::map<std::string, at::Tensor> load_export(const std::string&                hf_dir,
                                              std::map<std::string, io::DType>* dtypes) {
    const io::SafetensorsFile         f(hf_dir + "/model.safetensors");
    std::map<std::string, at::Tensor> out;
    for (const auto& t : f.tensors()) {
        out[t.name] = f.load(t.name);
        if (dtypes) (*dtypes)[t.name] = t.dtype;
    }
    return out;
}

TEST(StoreCheckpoint, FinalCheckpointIsDeterministicAndInspectable) {
    BundledRun&       run  = bundled_run();
    const std::string path = final_checkpoint_path(run.out);
    ASSERT_TRUE(fs::exists(path));
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    // The same layer files give the same bytes.
    const std::string bytes = read_bytes(path);
    write_final_checkpoint(run.out, run.n_layer, run.ckpt, kFp, run.root);
    EXPECT_TRUE(read_bytes(path) == bytes) << "model.requant.h5 is not byte-reproducible";

    const nlohmann::json s = inspect_checkpoint(path);
    EXPECT_EQ(s.at("method").get<std::string>(), "rtn");
    EXPECT_EQ(s.at("bits").get<int64_t>(), 4);
    EXPECT_EQ(s.at("n_layer").get<int64_t>(), run.n_layer);
    EXPECT_EQ(s.at("model").get<std::string>(), run.ckpt.dir());
    EXPECT_EQ(s.at("bits_per_weight").get<double>(), run.total.bits_per_weight());
    EXPECT_EQ(s.at("bits_per_weight").get<double>(), run.root.at("bits_per_weight").get<double>());
    EXPECT_EQ(s.at("bits_per_weight_paper").get<double>(), run.total.bits_per_weight_paper());
    EXPECT_EQ(s.at("linear_weights").get<double>(), run.total.weights);
    EXPECT_EQ(s.at("outliers").get<double>(), run.total.outliers);
    EXPECT_GT(s.at("outliers").get<double>(), 0);
    EXPECT_EQ(s.at("significant").get<double>(), 0);
    const double memory = run.root.at("memory_gib").get<double>();
    EXPECT_NEAR(s.at("memory_gib").get<double>(), memory, 1e-12 * memory)
        << "inspect and assemble count the memory differently";
    ASSERT_EQ(s.at("layers").size(), std::size_t(run.n_layer));
    for (int64_t l = 0; l < run.n_layer; ++l) {
        const auto& layer = s.at("layers")[std::size_t(l)];
        EXPECT_EQ(layer.at("layer").get<int64_t>(), l);
        EXPECT_EQ(layer.at("bits_per_weight").get<double>(),
                  storage_bits(run.q[std::size_t(l)]).bits_per_weight());
        ASSERT_EQ(layer.at("linears").size(), kNumLinears);
        for (std::size_t i = 0; i < kNumLinears; ++i) {
            const auto& lin = layer.at("linears")[i];
            const auto& d   = run.q[std::size_t(l)][i].dense;
            EXPECT_EQ(lin.at("name").get<std::string>(), model::linear_name(kLinears[i]));
            EXPECT_EQ(lin.at("shape")[0].get<int64_t>(), d.out_features());
            EXPECT_EQ(lin.at("shape")[1].get<int64_t>(), d.in_features());
            EXPECT_EQ(lin.at("bits").get<int>(), 4);
            EXPECT_EQ(lin.at("group_size").get<int64_t>(), 32);
            EXPECT_FALSE(lin.at("lut").get<bool>());
        }
    }
    EXPECT_NE(format_inspection(s).find("rtn"), std::string::npos);
    // Not a checkpoint: a layer state file.
    EXPECT_THROW(inspect_checkpoint(layer_state_path(run.out, 0)), FormatError);
}

TEST(StoreCheckpoint, ExportF32HoldsWHatAndTheSourceTensors) {
    BundledRun&       run = bundled_run();
    const std::string hf  = run.dir.sub("hf-f32");
    export_hf(run.out, hf, "f32");
    std::map<std::string, io::DType> dtypes;
    const auto                       t = load_export(hf, &dtypes);
    // Exactly the source model's tensor names.
    const auto            names = run.ckpt.tensor_names();
    std::set<std::string> src(names.begin(), names.end()), got;
    for (const auto& [name, v] : t) got.insert(name);
    EXPECT_EQ(got, src);
    int64_t n_linear = 0;
    for (int64_t l = 0; l < run.n_layer; ++l)
        for (std::size_t i = 0; i < kNumLinears; ++i) {
            const std::string name = model::linear_tensor_name(l, kLinears[i]);
            ASSERT_TRUE(t.count(name)) << name;
            EXPECT_EQ(dtypes.at(name), io::DType::F32) << name;
            const at::Tensor expected = quant::reconstruct(run.q[std::size_t(l)][i]);
            EXPECT_TRUE(at::equal(t.at(name), expected)) << name << ": not reconstruct(...)";
            EXPECT_TRUE(at::equal(t.at(name), run.w_hat[std::size_t(l)][i])) << name;
            ++n_linear;
        }
    EXPECT_EQ(n_linear, run.n_layer * int64_t(kNumLinears));
    for (const auto& name : names) {
        bool linear = false;
        for (int64_t l = 0; l < run.n_layer; ++l)
            for (const auto lin : kLinears) linear |= name == model::linear_tensor_name(l, lin);
        if (linear || !t.count(name)) continue;
        const at::Tensor s = run.ckpt.load_stored(name);
        EXPECT_EQ(t.at(name).scalar_type(), s.scalar_type()) << name;
        EXPECT_TRUE(at::equal(t.at(name), s)) << name << ": differs from the source model";
    }
    ASSERT_TRUE(fs::exists(hf + "/config.json"));
    const auto cfg = nlohmann::json::parse(read_bytes(hf + "/config.json"));
    const auto src_cfg =
        nlohmann::json::parse(read_bytes(test::shared_path(kModel) + "/config.json"));
    EXPECT_EQ(cfg.at("torch_dtype").get<std::string>(), "float32");
    for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "num_key_value_heads", "vocab_size"})
        EXPECT_EQ(cfg.at(key), src_cfg.at(key)) << key;
    // The folder loads as a model again, with the quantized weights in it.
    const io::HfCheckpoint back(hf);
    EXPECT_EQ(back.config().n_layer, run.n_layer);
    const model::StageWeights w =
        model::load_stage_weights(back, model::whole_model(back.config()), at::kFloat);
    EXPECT_TRUE(at::equal(w.layers[0].linear(model::Linear::Down), run.w_hat[0][6]));
}

// Shards of at most max bytes of tensor data, with the index the HF loaders read; the same
// tensors as the one-file export, bit for bit; a later one-file export into the same folder
// replaces the shards.
TEST(StoreCheckpoint, ExportShardsWithAnIndex) {
    BundledRun&       run = bundled_run();
    const std::string one = run.dir.sub("hf-one"), many = run.dir.sub("hf-many");
    export_hf(run.out, one, "f32");
    const auto    whole = load_export(one, nullptr);
    const int64_t max   = 300 * 1000;  // stories260k: ~1 MB of f32 weights
    export_hf(run.out, many, "f32", max);
    ASSERT_TRUE(fs::exists(many + "/model.safetensors.index.json"));
    EXPECT_FALSE(fs::exists(many + "/model.safetensors"));
    const auto index = nlohmann::json::parse(read_bytes(many + "/model.safetensors.index.json"));
    std::map<std::string, int64_t> shard_bytes;
    int64_t                        total = 0;
    for (const auto& [name, file] : index.at("weight_map").items()) {
        const io::SafetensorsFile sf(many + "/" + file.get<std::string>());
        ASSERT_TRUE(whole.count(name)) << name;
        const at::Tensor t = sf.load(name);
        EXPECT_TRUE(at::equal(t, whole.at(name))) << name;
        const int64_t b = t.numel() * int64_t(t.element_size());
        shard_bytes[file.get<std::string>()] += b;
        total += b;
    }
    EXPECT_EQ(index.at("weight_map").size(), whole.size());
    EXPECT_EQ(index.at("metadata").at("total_size").get<int64_t>(), total);
    EXPECT_GT(shard_bytes.size(), 2u);
    for (const auto& [file, b] : shard_bytes) {
        EXPECT_NE(file.find("-of-"), std::string::npos) << file;
        const io::SafetensorsFile sf(many + "/" + file);
        if (sf.tensors().size() > 1) {  // a larger tensor is alone
            EXPECT_LE(b, max) << file;
        }
    }
    // The folder loads through the index, and W_hat is in it.
    const io::HfCheckpoint    back(many);
    const model::StageWeights w =
        model::load_stage_weights(back, model::whole_model(back.config()), at::kFloat);
    EXPECT_TRUE(at::equal(w.layers[1].linear(model::Linear::Q), run.w_hat[1][0]));
    // Re-exported as one file into the same folder: no shard or index is left to mix with it.
    export_hf(run.out, many, "f32");
    EXPECT_TRUE(fs::exists(many + "/model.safetensors"));
    EXPECT_FALSE(fs::exists(many + "/model.safetensors.index.json"));
    for (const auto& e : fs::directory_iterator(many))
        EXPECT_EQ(e.path().filename().string().find("-of-"), std::string::npos) << e.path();
    EXPECT_THROW(export_hf(run.out, many, "f32", 0), ConfigError);
}

TEST(StoreCheckpoint, ExportBf16FromTheCheckpointFile) {
    BundledRun&       run = bundled_run();
    const std::string hf  = run.dir.sub("hf-bf16");
    export_hf(final_checkpoint_path(run.out), hf, "bf16");  // from the file, not the folder
    std::map<std::string, io::DType> dtypes;
    const auto                       t = load_export(hf, &dtypes);
    EXPECT_EQ(t.size(), run.ckpt.tensor_names().size());
    for (const auto& [name, dt] : dtypes) EXPECT_EQ(dt, io::DType::BF16) << name;
    for (int64_t l = 0; l < run.n_layer; ++l)
        for (std::size_t i = 0; i < kNumLinears; ++i) {
            const std::string name = model::linear_tensor_name(l, kLinears[i]);
            ASSERT_TRUE(t.count(name)) << name;
            EXPECT_TRUE(at::equal(t.at(name),
                                  quant::reconstruct(run.q[std::size_t(l)][i]).to(at::kBFloat16)))
                << name;
        }
    const std::string norm = "model.norm.weight";
    ASSERT_TRUE(t.count(norm));
    EXPECT_TRUE(at::equal(t.at(norm), run.ckpt.load_stored(norm).to(at::kBFloat16)));
    const auto cfg = nlohmann::json::parse(read_bytes(hf + "/config.json"));
    EXPECT_EQ(cfg.at("torch_dtype").get<std::string>(), "bfloat16");
}

TEST(StoreCheckpoint, ExportAndAssemblyErrors) {
    BundledRun& run = bundled_run();
    EXPECT_THROW(export_hf(run.out, run.dir.sub("hf-bad"), "int8"), ConfigError);
    EXPECT_THROW(export_hf(run.out, run.dir.sub("hf-bad"), "F32"), ConfigError);
    EXPECT_FALSE(fs::exists(run.dir.sub("hf-bad") + "/model.safetensors"));
    // A folder without model.requant.h5.
    TempDir empty;
    EXPECT_THROW(export_hf(empty.str(), run.dir.sub("hf-none"), "f32"), IoError);
    // Assembly with a layer file missing refuses, leaving no checkpoint behind.
    {
        QuietLog quiet;
        write_layer_state(empty.str(), 0, run.q[0], kFp);
        EXPECT_THROW(write_final_checkpoint(empty.str(), run.n_layer, run.ckpt, kFp, run.root),
                     StateError);
    }
    EXPECT_FALSE(fs::exists(final_checkpoint_path(empty.str())));
    EXPECT_FALSE(fs::exists(final_checkpoint_path(empty.str()) + ".tmp"));
}

}  // namespace

// ---- the damaged-state battery (issue 19): state that may come from another run or a damaged
// disk never reaches a rank unchecked. A layer file and run.h5, each truncated at 200 offsets
// and with single-bit flips at 1,000 seeded offsets, must read as damaged (nullopt: redone),
// be refused (rq::Error) or read back exactly as written: never crash, never another value.

// Every way `bytes` is damaged: 200 truncation lengths spread over the file, then 1,000 flips
// of one seeded (byte, bit) each.
std::vector<std::string> damaged_versions(const std::string& good, uint64_t seed) {
    std::vector<std::string> out;
    for (std::size_t k = 0; k < 200; ++k) out.push_back(good.substr(0, k * good.size() / 200));
    std::mt19937_64 rng(seed);
    for (int k = 0; k < 1000; ++k) {
        std::string bad = good;
        bad[rng() % bad.size()] ^= char(1u << (rng() % 8));
        out.push_back(std::move(bad));
    }
    return out;
}

enum class Outcome { Damaged, Refused, Same, Wrong };

// Writes every damaged version of `good` (seeded) to `path` in turn and counts what `read`
// makes of each; `why` says what was wrong. Prints the counts under `label`.
std::map<Outcome, int64_t> run_battery(const std::string& label, const std::string& path,
                                       const std::string& good, uint64_t seed,
                                       const std::function<Outcome(std::string& why)>& read) {
    const HdfDamagedReads      damaged;
    const auto                 all = damaged_versions(good, seed);
    std::map<Outcome, int64_t> n;
    std::vector<std::string>   wrong;
    for (std::size_t i = 0; i < all.size(); ++i) {
        write_bytes(path, all[i]);
        std::string   why;
        const Outcome o = read(why);
        ++n[o];
        if (o == Outcome::Wrong) wrong.push_back("case " + std::to_string(i) + ": " + why);
    }
    std::printf(
        "%s %zu bytes, %zu damaged versions: %lld damaged, %lld refused, %lld "
        "unchanged, %zu wrong\n",
        label.c_str(), good.size(), all.size(), (long long)n[Outcome::Damaged],
        (long long)n[Outcome::Refused], (long long)n[Outcome::Same], wrong.size());
    EXPECT_TRUE(wrong.empty()) << wrong.front();
    return n;
}

TEST_F(WrittenLayer, DamagedLayerFileBattery) {
    const auto n = run_battery("layer file", p, read_bytes(p), 20261204, [&](std::string& why) {
        try {
            const auto back = read_layer_state(d.str(), kLayer, kFp);
            if (!back) return Outcome::Damaged;  // redone
            why = layer_difference(q, *back);
            return why.empty() ? Outcome::Same : Outcome::Wrong;
        } catch (const rq::Error&) {
            return Outcome::Refused;
        }
    });
    EXPECT_GE(n.at(Outcome::Damaged), 200) << "every truncation reads as damaged";
}

RunState sample_run_state() {
    RunState s;
    s.fp              = {"model-digest", "data-digest", "job-digest"};
    s.calib           = at::arange(8 * 64, at::kLong).reshape({8, 64}) % 509;
    s.calib_available = 8;
    s.eval_names      = {"a.txt", "b.safetensors"};
    s.eval_tokens     = {at::arange(4 * 64, at::kLong).reshape({4, 64}) % 97,
                         at::arange(2 * 64, at::kLong).reshape({2, 64}) % 13};
    s.mark("prepare", 1.5);
    s.mark("baseline", 2.25);
    s.ppl_fp = Perplexities{{"a.txt", 17.4413}, {"calibration", 17.94}};
    return s;
}

bool same_run_state(const RunState& a, const RunState& b) {
    bool same = a.fp == b.fp && a.calib_available == b.calib_available &&
                a.eval_names == b.eval_names && a.records() == b.records() &&
                a.eval_tokens.size() == b.eval_tokens.size() && at::equal(a.calib, b.calib);
    for (std::size_t i = 0; same && i < a.eval_tokens.size(); ++i)
        same = at::equal(a.eval_tokens[i], b.eval_tokens[i]);
    return same;
}

TEST(StoreRunState, DamagedRunH5Battery) {
    QuietLog       quiet;
    TempDir        d;
    const RunState s = sample_run_state();
    write_run_state(d.str(), s);
    const std::string path = run_state_path(d.str());
    ASSERT_TRUE(read_run_state(d.str()).has_value());
    ASSERT_TRUE(same_run_state(s, *read_run_state(d.str())));
    const auto n = run_battery("run.h5", path, read_bytes(path), 4121, [&](std::string& why) {
        try {
            const auto back = read_run_state(d.str());
            if (!back) return Outcome::Damaged;  // as if absent
            why = "read back different";
            return same_run_state(s, *back) ? Outcome::Same : Outcome::Wrong;
        } catch (const rq::StateError&) {
            return Outcome::Refused;
        } catch (const rq::Error& e) {
            why = std::string("not a StateError: ") + e.what();
            return Outcome::Wrong;
        }
    });
    EXPECT_GE(n.at(Outcome::Refused), 200) << "every truncation is refused with the way out";
}

}  // namespace rq::store
