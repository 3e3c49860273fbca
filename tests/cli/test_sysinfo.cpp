// Command-line runtime facts and values: the OpenBLAS core decision (cli/sysinfo.h) on injected
// /proc/cpuinfo flags and core names, and byte sizes as Hugging Face spells them (cli/args.h).
#include <gtest/gtest.h>

#include "requant/cli/args.h"
#include "requant/cli/sysinfo.h"
#include "requant/error.h"

namespace {

using rq::cli::openblas_core_to_force;

// Flags lines as /proc/cpuinfo prints them (shortened).
const char* kSapphireRapids =  // Intel family 6 model 207: OpenBLAS 0.3.21 falls back to Prescott
    "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512cd avx512bw "
    "avx512vl avx512_bf16 amx_bf16 amx_tile amx_int8";
const char* kSkylakeServer = "fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw";
const char* kZen4          = "fpu sse sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni";
const char* kZen3          = "fpu sse sse2 avx avx2 fma bmi2";  // no AVX-512

TEST(OpenblasCore, FallbackOnAvx512WithBf16GetsCooperlake) {
    EXPECT_EQ(openblas_core_to_force(kSapphireRapids, "Prescott", false), "Cooperlake");
    EXPECT_EQ(openblas_core_to_force(kZen4, "Haswell", false), "Cooperlake");
    EXPECT_EQ(openblas_core_to_force(kZen4, "Zen", false), "Cooperlake");
}

TEST(OpenblasCore, FallbackOnAvx512WithoutBf16GetsSkylakeX) {
    EXPECT_EQ(openblas_core_to_force(kSkylakeServer, "Haswell", false), "SkylakeX");
    EXPECT_EQ(openblas_core_to_force(kSkylakeServer, "Prescott", false), "SkylakeX");
}

TEST(OpenblasCore, Avx512CoreIsKept) {
    EXPECT_EQ(openblas_core_to_force(kSkylakeServer, "SkylakeX", false), "");
    EXPECT_EQ(openblas_core_to_force(kSapphireRapids, "Cooperlake", false), "");
    EXPECT_EQ(openblas_core_to_force(kSapphireRapids, "COOPERLAKE", false), "");  // any case
    EXPECT_EQ(openblas_core_to_force(kSapphireRapids, "SapphireRapids", false), "");
}

TEST(OpenblasCore, CpuWithoutAvx512IsLeftAlone) {
    EXPECT_EQ(openblas_core_to_force(kZen3, "Zen", false), "");
    EXPECT_EQ(openblas_core_to_force(kZen3, "Prescott", false), "");
    EXPECT_EQ(openblas_core_to_force("", "Prescott", false), "");
}

TEST(OpenblasCore, UserSettingWins) {
    EXPECT_EQ(openblas_core_to_force(kSapphireRapids, "Prescott", true), "");
}

TEST(OpenblasCore, NotOpenblasForcesNothing) {
    EXPECT_EQ(openblas_core_to_force(kSapphireRapids, "", false), "");
}

TEST(OpenblasCore, WholeFlagsTokensOnly) {
    // avx512fp16 is not avx512f; avx512_bf16x is not avx512_bf16.
    EXPECT_EQ(openblas_core_to_force("sse avx512fp16", "Prescott", false), "");
    EXPECT_EQ(openblas_core_to_force("avx512f avx512_bf16x", "Haswell", false), "SkylakeX");
}

TEST(OpenblasCore, ThisMachineFlagsAreRead) {
    // /proc/cpuinfo of any x86-64 Linux lists sse2.
    const std::string flags = rq::cli::cpu_flags();
    EXPECT_NE(flags.find("sse2"), std::string::npos) << flags.substr(0, 200);
}

}  // namespace

namespace {

using rq::cli::parse_byte_size;

TEST(ByteSize, HuggingFaceSpellings) {
    EXPECT_EQ(parse_byte_size("5GB"), 5000000000);
    EXPECT_EQ(parse_byte_size("500MB"), 500000000);
    EXPECT_EQ(parse_byte_size("200KB"), 200000);
    EXPECT_EQ(parse_byte_size("2GiB"), int64_t(2) << 30);
    EXPECT_EQ(parse_byte_size("1.5MiB"), 1572864);
    EXPECT_EQ(parse_byte_size("10kb"), 10000);
    EXPECT_EQ(parse_byte_size("1000000"), 1000000);
    EXPECT_EQ(parse_byte_size("64B"), 64);
}

TEST(ByteSize, RefusesWhatIsNotASize) {
    for (const char* bad : {"", "GB", "5 XB", "-1MB", "0", "five", "5GBs", "0.1B"})
        EXPECT_THROW(parse_byte_size(bad), rq::ConfigError) << bad;
}

}  // namespace
