// Tests of the safetensors reader and writer (requant/io/safetensors.h): round trips of every
// dtype the models use, metadata, and one test per malformation the reader must refuse by name.
// Malformed files are written byte by byte (io_fixtures.h: safetensors_bytes).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "io_fixtures.h"
#include "requant/error.h"
#include "requant/io/safetensors.h"

namespace {

using rq::io::DType;
using rq::io::SafetensorsFile;
using rq::io::write_safetensors;
using rq::io_test::expect_error;
using rq::io_test::TempDir;
using rq::io_test::write_raw_safetensors;

// Opening `path` must fail with FormatError naming the file and every needle.
void expect_bad_file(const std::string& path, std::vector<std::string> needles) {
    needles.push_back("bad.safetensors");
    expect_error<rq::FormatError>([&] { SafetensorsFile f(path); }, needles);
}

std::map<std::string, at::Tensor> sample_tensors() {
    at::manual_seed(1234);
    return {
        {"f32", at::randn({3, 5})},
        {"f16", at::randn({4, 2}).to(at::kHalf)},
        {"bf16", at::randn({7}).to(at::kBFloat16)},
        {"f64", at::randn({2, 2}, at::kDouble)},
        {"i32", at::arange(-6, 6, at::kInt).reshape({3, 4})},
        {"i64", at::tensor({-(int64_t{1} << 40), int64_t{0}, int64_t{1} << 40}, at::kLong)},
        {"u8", at::arange(250, 256, at::kByte)},
        {"scalar", at::full({}, 2.5f)},
        {"empty", at::zeros({0, 3})},
    };
}

TEST(Safetensors, RoundTripKeepsDtypeShapeAndValues) {
    TempDir    tmp;
    const auto path = tmp.file("rt.safetensors");
    const auto in   = sample_tensors();
    write_safetensors(path, in);

    SafetensorsFile f(path);
    ASSERT_EQ(f.tensors().size(), in.size());
    for (const auto& [name, t] : in) {
        SCOPED_TRACE(name);
        const rq::io::TensorInfo* info = f.find(name);
        ASSERT_NE(info, nullptr);
        EXPECT_EQ(rq::io::dtype_scalar_type(info->dtype), t.scalar_type());
        EXPECT_EQ(info->shape, t.sizes().vec());
        EXPECT_EQ(info->end - info->begin, t.numel() * t.element_size());
        const at::Tensor back = f.load(name);
        EXPECT_EQ(back.scalar_type(), t.scalar_type());
        EXPECT_EQ(back.sizes(), t.sizes());
        EXPECT_TRUE(at::equal(back, t));
    }
    EXPECT_EQ(f.find("i64")->dtype, DType::I64);
    EXPECT_EQ(f.find("bf16")->dtype, DType::BF16);
    EXPECT_EQ(f.find("nope"), nullptr);
}

TEST(Safetensors, LoadConvertsToFloat) {
    TempDir    tmp;
    const auto path = tmp.file("conv.safetensors");
    const auto in   = sample_tensors();
    write_safetensors(path, in);

    SafetensorsFile f(path);
    for (const auto& [name, t] : in) {
        SCOPED_TRACE(name);
        const at::Tensor back = f.load(name, at::kFloat);
        EXPECT_EQ(back.scalar_type(), at::kFloat);
        EXPECT_TRUE(at::equal(back, t.to(at::kFloat)));
    }
    // A conversion the other way: F32 stored, BF16 asked for.
    EXPECT_TRUE(at::equal(f.load("f32", at::kBFloat16), in.at("f32").to(at::kBFloat16)));
}

TEST(Safetensors, LoadedTensorOutlivesTheFile) {
    TempDir    tmp;
    const auto path = tmp.file("own.safetensors");
    const auto t    = at::arange(10, at::kFloat);
    write_safetensors(path, {{"t", t}});
    at::Tensor back;
    {
        SafetensorsFile f(path);
        back = f.load("t");
    }
    EXPECT_TRUE(at::equal(back, t));
}

TEST(Safetensors, MetadataRoundTrip) {
    TempDir                                  tmp;
    const auto                               path = tmp.file("meta.safetensors");
    const std::map<std::string, std::string> meta = {{"format", "pt"}, {"quant", "rtn4 g128"}};
    write_safetensors(path, {{"w", at::ones({2})}}, meta);
    SafetensorsFile f(path);
    EXPECT_EQ(f.metadata(), meta);
    EXPECT_EQ(f.tensors().size(), 1u);  // __metadata__ is not a tensor
}

TEST(Safetensors, TensorsAreListedInFileOrder) {
    TempDir    tmp;
    const auto path = tmp.file("order.safetensors");
    // Header keys in the opposite order to the data.
    write_raw_safetensors(path,
                          R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                          R"("a":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}})",
                          "\x01\x02\x03");
    SafetensorsFile f(path);
    ASSERT_EQ(f.tensors().size(), 2u);
    EXPECT_EQ(f.tensors()[0].name, "b");
    EXPECT_EQ(f.tensors()[1].name, "a");
}

TEST(Safetensors, UnalignedDataLoads) {
    // An odd header length and an F32 tensor at data offset 1: neither is aligned.
    TempDir     tmp;
    const auto  path = tmp.file("unaligned.safetensors");
    const float v[2] = {1.5f, -3.25f};
    std::string data = "\x07";
    data.append(reinterpret_cast<const char*>(v), sizeof(v));
    write_raw_safetensors(path,
                          R"({"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                          R"("f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]} })",
                          data);
    SafetensorsFile f(path);
    EXPECT_EQ(f.load("u").item<uint8_t>(), 7);
    EXPECT_TRUE(at::equal(f.load("f"), at::tensor({1.5f, -3.25f})));
}

TEST(SafetensorsErrors, MissingFileIsIoError) {
    TempDir tmp;
    expect_error<rq::IoError>([&] { SafetensorsFile f(tmp.file("absent.safetensors")); },
                              {"absent.safetensors"});
}

TEST(SafetensorsErrors, ShorterThanEightBytes) {
    TempDir tmp;
    rq::io_test::write_file(tmp.file("bad.safetensors"), std::string("\x05\x00\x00", 3));
    expect_bad_file(tmp.file("bad.safetensors"), {"truncated"});
    rq::io_test::write_file(tmp.file("bad.safetensors"), "");
    expect_bad_file(tmp.file("bad.safetensors"), {"truncated"});
}

TEST(SafetensorsErrors, HeaderLengthBeyondFile) {
    TempDir           tmp;
    const std::string hdr = "{}";
    std::string       bytes(8, '\0');
    bytes[0] = static_cast<char>(0xe8), bytes[1] = 0x03;  // 1000 little-endian
    rq::io_test::write_file(tmp.file("bad.safetensors"), bytes + hdr);
    expect_bad_file(tmp.file("bad.safetensors"), {"header length 1000", "beyond"});
    // A huge length must not wrap around.
    rq::io_test::write_file(tmp.file("bad.safetensors"), std::string(8, '\xff') + hdr);
    expect_bad_file(tmp.file("bad.safetensors"), {"beyond"});
}

TEST(SafetensorsErrors, HeaderNotJson) {
    TempDir tmp;
    write_raw_safetensors(tmp.file("bad.safetensors"), "{\"w\": {\"dtype\": ");
    expect_bad_file(tmp.file("bad.safetensors"), {"not valid JSON"});
}

TEST(SafetensorsErrors, HeaderNotObject) {
    TempDir tmp;
    write_raw_safetensors(tmp.file("bad.safetensors"), "[1, 2, 3]");
    expect_bad_file(tmp.file("bad.safetensors"), {"not a JSON object"});
}

TEST(SafetensorsErrors, UnknownDtype) {
    TempDir tmp;
    for (const std::string& dt : std::vector<std::string>{"F8_E4M3", "Q4", "f32"}) {
        SCOPED_TRACE(dt);
        write_raw_safetensors(tmp.file("bad.safetensors"),
                              R"({"w":{"dtype":")" + dt + R"(","shape":[4],"data_offsets":[0,4]}})",
                              "abcd");
        expect_bad_file(tmp.file("bad.safetensors"), {"tensor 'w'", "'" + dt + "'"});
    }
}

TEST(SafetensorsErrors, NegativeShape) {
    TempDir tmp;
    write_raw_safetensors(tmp.file("bad.safetensors"),
                          R"({"w":{"dtype":"U8","shape":[-1,4],"data_offsets":[0,4]}})", "abcd");
    expect_bad_file(tmp.file("bad.safetensors"), {"tensor 'w'", "invalid shape"});
}

TEST(SafetensorsErrors, MissingField) {
    TempDir tmp;
    write_raw_safetensors(tmp.file("bad.safetensors"), R"({"w":{"dtype":"U8","shape":[4]}})",
                          "abcd");
    expect_bad_file(tmp.file("bad.safetensors"), {"tensor 'w'", "data_offsets"});
}

TEST(SafetensorsErrors, BeginAfterEnd) {
    TempDir tmp;
    write_raw_safetensors(tmp.file("bad.safetensors"),
                          R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", "abcd");
    expect_bad_file(tmp.file("bad.safetensors"), {"tensor 'w'", "begin > end"});
}

TEST(SafetensorsErrors, TruncatedInTheData) {
    TempDir    tmp;
    const auto path = tmp.file("bad.safetensors");
    write_safetensors(path, {{"a", at::ones({4})}, {"b", at::ones({4})}});
    const std::size_t full = rq::io_test::read_file(path).size();
    rq::io_test::truncate_file(path, full - 4);  // cuts into 'b', the last tensor
    expect_bad_file(path, {"tensor 'b'", "beyond the data", "truncated"});
}

TEST(SafetensorsErrors, OverlappingOffsets) {
    TempDir tmp;
    write_raw_safetensors(tmp.file("bad.safetensors"),
                          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                          std::string(12, '\0'));
    expect_bad_file(tmp.file("bad.safetensors"), {"'a'", "'b'", "overlap"});
}

TEST(SafetensorsErrors, ByteLengthDisagreesWithShape) {
    TempDir tmp;
    write_raw_safetensors(tmp.file("bad.safetensors"),
                          R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})",
                          std::string(16, '\0'));
    expect_bad_file(tmp.file("bad.safetensors"), {"tensor 'w'", "holds 12 bytes", "needs 16"});
}

TEST(SafetensorsErrors, ShapeWhoseSizeOverflowsIsRefused) {
    // 2^32 x 2^32 elements: the byte count wraps to 0 in 64 bits and would match [0, 0).
    TempDir tmp;
    write_raw_safetensors(
        tmp.file("bad.safetensors"),
        R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})");
    expect_bad_file(tmp.file("bad.safetensors"), {"tensor 'w'"});
}

TEST(SafetensorsErrors, MissingTensorOnLoad) {
    TempDir    tmp;
    const auto path = tmp.file("bad.safetensors");
    write_safetensors(path, {{"x", at::ones({2})}});
    SafetensorsFile f(path);
    expect_error<rq::FormatError>([&] { f.load("y"); },
                                  {"bad.safetensors", "tensor 'y'", "missing"});
    expect_error<rq::FormatError>([&] { f.load("y", at::kFloat); },
                                  {"bad.safetensors", "tensor 'y'", "missing"});
}

}  // namespace

namespace {

// A random tensor of `st` with NaN / +Inf / -Inf placed at `bad` (flat indices).
at::Tensor with_non_finite(at::ScalarType st, int64_t n, const std::vector<int64_t>& bad,
                           double value) {
    at::Tensor t = at::randn({n}, at::kDouble).mul_(1e3).to(st);
    for (const int64_t i : bad) t[i] = value;
    return t;
}

}  // namespace

TEST(SafetensorsFinite, ScanMatchesIsFiniteForEveryFloatDtype) {
    at::manual_seed(7);
    const std::pair<at::ScalarType, DType> types[]  = {{at::kDouble, DType::F64},
                                                       {at::kFloat, DType::F32},
                                                       {at::kHalf, DType::F16},
                                                       {at::kBFloat16, DType::BF16}};
    const double                           values[] = {std::nan(""), INFINITY, -INFINITY};
    for (const auto& [st, dt] : types)
        for (const double v : values)
            for (const std::vector<int64_t>& bad :
                 {std::vector<int64_t>{}, {0}, {4095}, {4096}, {9999, 5000}, {10000 - 1}}) {
                const at::Tensor t = with_non_finite(st, 10000, bad, v);
                EXPECT_EQ(rq::io::first_non_finite(t.data_ptr(), 10000, dt),
                          rq::io::first_non_finite_ref(t))
                    << rq::io::dtype_name(dt) << " value " << v << " bad " << bad.size();
            }
    // Large finite values (the F16 maximum, BF16 near its maximum) are not flagged.
    const at::Tensor big = at::full({100}, 65504.0, at::kHalf);
    EXPECT_EQ(rq::io::first_non_finite(big.data_ptr(), 100, DType::F16), -1);
    const at::Tensor bbig = at::full({100}, 3.0e38, at::kBFloat16);
    EXPECT_EQ(rq::io::first_non_finite(bbig.data_ptr(), 100, DType::BF16), -1);
}

TEST(SafetensorsFinite, LoadRequiringFiniteNamesFileTensorAndElement) {
    TempDir d;
    // More than one 1 MiB copy block, the NaN in the second block; an Inf; a clean tensor.
    const int64_t n = 300000;  // x 4 bytes
    write_safetensors(d.file("m.safetensors"),
                      {{"a.nan", with_non_finite(at::kFloat, n, {270000}, std::nan(""))},
                       {"b.inf", with_non_finite(at::kBFloat16, 64, {5}, -INFINITY)},
                       {"c.ok", at::ones({8}, at::kHalf)}});
    SafetensorsFile f(d.file("m.safetensors"));
    expect_error<rq::FormatError>(
        [&] { f.load("a.nan", at::kFloat, rq::io::Finite::require); },
        {d.file("m.safetensors"), "tensor 'a.nan' holds NaN at element 270000 of [300000] (F32)"});
    expect_error<rq::FormatError>([&] { f.load("b.inf", at::kFloat, rq::io::Finite::require); },
                                  {"tensor 'b.inf' holds -Inf at element 5 of [64] (BF16)"});
    EXPECT_TRUE(f.load("c.ok", at::kFloat, rq::io::Finite::require).equal(at::ones({8})));
    EXPECT_EQ(f.load("a.nan", at::kFloat).isnan().sum().item<int64_t>(), 1);  // Finite::any
}
