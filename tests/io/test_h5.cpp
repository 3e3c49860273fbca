// HDF5 files: every dtype round trips, attributes, groups made on the way, external links,
// atomic creation (nothing at the final name before commit, nothing left on abandon), equal
// content gives equal bytes, a flipped bit in a dataset is caught by its digest, and one H5Error
// per kind of bad input naming the file and object.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "io_fixtures.h"
#include "requant/io/atomic_file.h"
#include "requant/io/h5.h"

namespace rq::io_test {
namespace {

using io::H5Error;
using io::H5File;

bool exists(const std::string& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0;
}

TEST(H5, RoundTripEveryDtype) {
    const std::string deep     = "/deep";  // groups made on the way: /deep/er
    const std::string f64_path = deep + "/er" + "/f64";
    TempDir           d;
    const std::string p   = d.file("a.h5");
    const at::Tensor  f32 = at::arange(12, at::kFloat).view({3, 4}) / 7;
    const at::Tensor  f64 = at::arange(5, at::kDouble) / 3;
    const at::Tensor  i32 = at::arange(-3, 3, at::kInt);
    const at::Tensor  i64 = at::arange(6, at::kLong).view({2, 3}) * (int64_t(1) << 40);
    const at::Tensor  u8  = at::arange(200, 210, at::kByte);
    const at::Tensor  bl  = at::arange(4, at::kLong).remainder(2).to(at::kBool);
    const at::Tensor  f16 = (at::arange(6, at::kFloat) / 3 - 1).to(at::kHalf);
    {
        H5File h(p, H5File::Mode::Create);
        h.write("/f32", f32);
        h.write(f64_path, f64);
        h.write("/i32", i32);
        h.write("/i64", i64);
        h.write("/u8", u8);
        h.write("/bool", bl);
        h.write("/f16", f16);
        h.write("/empty", at::zeros({0, 3}, at::kFloat));
        h.set_attr("/", "name", std::string("llama"));
        h.set_attr(f64_path, "scale", 0.125);
        h.set_attr("/deep", "layers", int64_t(-7));
        h.set_attr("/deep", "layers", int64_t(8));  // replaced, not duplicated
        h.commit();
    }
    H5File h(p, H5File::Mode::Read);
    EXPECT_TRUE(at::equal(h.read("/f32"), f32));
    EXPECT_TRUE(at::equal(h.read(f64_path), f64));
    EXPECT_TRUE(at::equal(h.read("/i32"), i32));
    EXPECT_TRUE(at::equal(h.read("/i64"), i64));
    EXPECT_TRUE(at::equal(h.read("/u8"), u8));
    EXPECT_TRUE(at::equal(h.read("/bool"), bl.to(at::kByte)));
    EXPECT_TRUE(at::equal(h.read("/f16"), f16));
    EXPECT_EQ(h.children("/"), (std::vector<std::string>{"bool", "deep", "empty", "f16", "f32",
                                                         "i32", "i64", "u8"}));
    EXPECT_EQ(h.read("/empty").sizes(), (std::vector<int64_t>{0, 3}));
    EXPECT_EQ(h.attr_string("/", "name"), "llama");
    EXPECT_EQ(h.attr_double(f64_path, "scale"), 0.125);
    EXPECT_EQ(h.attr_int("/deep", "layers"), 8);
    EXPECT_TRUE(h.exists(deep + "/er"));
    EXPECT_FALSE(h.exists(deep + "/nope" + "/f64"));
}

TEST(H5, CreateIsAtomic) {
    TempDir           d;
    const std::string p = d.file("b.h5");
    {
        H5File h(p, H5File::Mode::Create);
        h.write("/x", at::ones({4}));
        EXPECT_FALSE(exists(p)) << "the final name appears only on commit";
        EXPECT_TRUE(exists(p + ".tmp"));
    }
    EXPECT_FALSE(exists(p)) << "abandoned without commit";
    EXPECT_FALSE(exists(p + ".tmp")) << "the temporary is removed";
    H5File h(p, H5File::Mode::Create);
    h.write("/x", at::ones({4}));
    h.commit();
    EXPECT_TRUE(exists(p));
    EXPECT_FALSE(exists(p + ".tmp"));
}

// write_file_atomic: the new bytes replace the old whole; a file that cannot be written is
// refused naming it, and nothing is left beside it.
TEST(AtomicFile, ReplacesWholeOrNotAtAll) {
    TempDir           d;
    const std::string p = d.file("r.json");
    io::write_file_atomic(p, "first\n");
    io::write_file_atomic(p, "second, longer\n");
    std::ifstream f(p);
    std::string   line;
    std::getline(f, line);
    EXPECT_EQ(line, "second, longer");
    const std::string missing = d.file("no/such/folder/r.json");
    expect_error<IoError>([&] { io::write_file_atomic(missing, "x"); },
                          {missing, "cannot create", "No such file or directory"});
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator(d.path())) n += e.is_regular_file();
    EXPECT_EQ(n, 1) << "only r.json";
    expect_error<IoError>([&] { io::fsync_file(missing); }, {missing, "cannot open to sync"});
}

TEST(H5, EqualContentEqualBytesAndFlippedBitsCaught) {
    TempDir    d;
    const auto w = at::arange(1000, at::kFloat) / 9;
    for (const char* name : {"one.h5", "two.h5"}) {
        // Over a second apart: a timestamp anywhere (the root group's too) would differ.
        if (std::string(name) == "two.h5")
            std::this_thread::sleep_for(std::chrono::milliseconds(1100));
        H5File h(d.file(name), H5File::Mode::Create);
        h.write(std::string("/layers") + "/000" + "/w", w);
        h.set_attr("/", "phase", std::string("quantized"));
        h.commit();
    }
    const std::string one = read_file(d.file("one.h5"));
    EXPECT_EQ(one, read_file(d.file("two.h5"))) << "no timestamps in the file";
    // Flip one bit inside w's bytes (found by its value pattern) and read it back.
    const float       probe[2] = {w[500].item<float>(), w[501].item<float>()};
    const std::string needle(reinterpret_cast<const char*>(probe), sizeof probe);
    const auto        at = one.find(needle);
    ASSERT_NE(at, std::string::npos);
    std::string bad = one;
    bad[at] ^= 0x10;
    write_file(d.file("bad.h5"), bad);
    H5File h(d.file("bad.h5"), H5File::Mode::Read);
    expect_error<H5Error>([&] { h.read(std::string("/layers") + "/000" + "/w"); },
                          {"bad.h5", "checksum mismatch"});
}

TEST(H5, ExternalLinkResolvesBesideTheFile) {
    TempDir d;
    {
        H5File part(d.file("part.h5"), H5File::Mode::Create);
        part.write("/w", at::arange(3, at::kFloat));
        part.commit();
        H5File index(d.file("index.h5"), H5File::Mode::Create);
        index.link_external(std::string("/layers") + "/000", "part.h5", "/");
        index.commit();
    }
    H5File index(d.file("index.h5"), H5File::Mode::Read);
    EXPECT_TRUE(
        at::equal(index.read(std::string("/layers") + "/000" + "/w"), at::arange(3, at::kFloat)));
}

TEST(H5Errors, BadInput) {
    TempDir d;
    expect_error<H5Error>([&] { H5File(d.file("none.h5"), H5File::Mode::Read); },
                          {"none.h5", "no such file"});
    write_file(d.file("text.h5"), "this is not an HDF5 file at all");
    expect_error<H5Error>([&] { H5File(d.file("text.h5"), H5File::Mode::Read); },
                          {"text.h5", "cannot open as HDF5"});
    {
        H5File h(d.file("c.h5"), H5File::Mode::Create);
        h.write("/x", at::ones({64, 64}));
        h.set_attr("/x", "n", int64_t(1));
        h.commit();
    }
    H5File h(d.file("c.h5"), H5File::Mode::Append);
    expect_error<H5Error>([&] { h.read("/y"); }, {"c.h5", "no dataset /y"});
    expect_error<H5Error>([&] { h.write("/x", at::ones({1})); }, {"c.h5", "/x already exists"});
    expect_error<H5Error>([&] { h.attr_double("/x", "m"); }, {"c.h5", "no attribute m"});
    expect_error<H5Error>([&] { h.attr_string("/x", "n"); }, {"is not a string"});
    expect_error<H5Error>([&] { h.write("/h", at::ones({2}, at::kShort)); },
                          {"/h", "cannot be stored"});
    // A file cut short: its superblock says more bytes than there are.
    const std::string bytes = read_file(d.file("c.h5"));
    write_file(d.file("cut.h5"), bytes.substr(0, bytes.size() / 2));
    expect_error<H5Error>(
        [&] {
            H5File t(d.file("cut.h5"), H5File::Mode::Read);
            t.read("/x");
        },
        {"cut.h5"});
}

}  // namespace
}  // namespace rq::io_test
