// Tests of evaluation and calibration data (requant/io/dataset.h): token datasets (stories260k's
// eval-tokens, a reference dump), text cut into windows (sotu-1981-2021 with llama-7m-en's
// tokenizer, checked against REFERENCE.md), and the refusals, each naming the file.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io_fixtures.h"
#include "requant/error.h"
#include "requant/io/dataset.h"
#include "requant/io/safetensors.h"
#include "requant/io/tokenizer.h"

namespace {

using rq::io::load_eval_data;
using rq::io::load_text_windows;
using rq::io::load_token_dataset;
using rq::io::TokenData;
using rq::io_test::data_path;
using rq::io_test::expect_error;
using rq::io_test::model_dir;
using rq::io_test::TempDir;

std::string sotu() {
    return data_path("sotu-1981-2021.txt");
}
std::string llama7m_tokenizer() {
    return model_dir("llama-7m-en") + "/tokenizer.model";
}

// llama-7m-en's reference token ids: the first 256 ids of sotu-1981-2021.txt, int64 [256].
at::Tensor reference_ids() {
    rq::io::SafetensorsFile ref(model_dir("llama-7m-en") + "/reference.safetensors");
    return ref.load("tokens", at::kLong).reshape({256});
}

// ---- token datasets --------------------------------------------------------------------------

TEST(TokenDataset, Stories260kEval) {
    const std::string path = model_dir("stories260k") + "/eval-tokens.safetensors";
    const TokenData   d    = load_token_dataset(path);
    EXPECT_EQ(d.tokens.scalar_type(), at::kLong);
    EXPECT_EQ(d.tokens.sizes(), (std::vector<int64_t>{32, 256}));
    EXPECT_EQ(d.n_available, 32);
    EXPECT_EQ(d.n_tokens, 8192);
    EXPECT_EQ(d.source, path);
    EXPECT_TRUE(at::equal(d.tokens, rq::io::SafetensorsFile(path).load("tokens").to(at::kLong)));
    EXPECT_TRUE((d.tokens.select(1, 0) == 1).all().item<bool>());  // every sequence starts with BOS
    EXPECT_LT(d.tokens.max().item<int64_t>(), 512);                // stories260k's vocabulary
}

TEST(TokenDataset, MaxSeqs) {
    const std::string path = model_dir("stories260k") + "/eval-tokens.safetensors";
    const TokenData   all  = load_token_dataset(path);
    const TokenData   few  = load_token_dataset(path, 5);
    EXPECT_EQ(few.tokens.sizes(), (std::vector<int64_t>{5, 256}));
    EXPECT_EQ(few.n_available, 32);  // before max_seqs
    EXPECT_TRUE(at::equal(few.tokens, all.tokens.narrow(0, 0, 5)));
    EXPECT_EQ(load_token_dataset(path, 1000).tokens.size(0), 32);  // more than there are: all
}

TEST(TokenDataset, ReferenceDumpIsADataset) {
    // Other tensors (logits, loss_per_sequence) are ignored.
    const TokenData d = load_token_dataset(model_dir("llama-7m-en") + "/reference.safetensors");
    EXPECT_EQ(d.tokens.sizes(), (std::vector<int64_t>{4, 64}));
    EXPECT_TRUE(at::equal(d.tokens.reshape({256}), reference_ids()));
}

TEST(TokenDatasetErrors, NoTokensTensor) {
    TempDir tmp;
    rq::io::write_safetensors(tmp.file("bad.safetensors"), {{"ids", at::ones({2, 8}, at::kLong)}});
    expect_error<rq::FormatError>([&] { load_token_dataset(tmp.file("bad.safetensors")); },
                                  {"bad.safetensors", "'tokens'"});
}

TEST(TokenDatasetErrors, FloatTokens) {
    TempDir tmp;
    rq::io::write_safetensors(tmp.file("bad.safetensors"), {{"tokens", at::ones({2, 8})}});
    expect_error<rq::FormatError>([&] { load_token_dataset(tmp.file("bad.safetensors")); },
                                  {"bad.safetensors", "tensor 'tokens'", "F32"});
}

TEST(TokenDatasetErrors, NotTwoDimensional) {
    TempDir tmp;
    rq::io::write_safetensors(tmp.file("bad.safetensors"), {{"tokens", at::ones({16}, at::kLong)}});
    expect_error<rq::FormatError>([&] { load_token_dataset(tmp.file("bad.safetensors")); },
                                  {"bad.safetensors", "tensor 'tokens'", "[16]"});
    rq::io::write_safetensors(tmp.file("bad.safetensors"),
                              {{"tokens", at::ones({2, 4, 4}, at::kInt)}});
    expect_error<rq::FormatError>([&] { load_token_dataset(tmp.file("bad.safetensors")); },
                                  {"bad.safetensors", "tensor 'tokens'", "[2, 4, 4]"});
}

TEST(TokenDatasetErrors, MissingFile) {
    TempDir tmp;
    expect_error<rq::IoError>([&] { load_token_dataset(tmp.file("absent.safetensors")); },
                              {"absent.safetensors"});
}

// ---- text windows ----------------------------------------------------------------------------

TEST(TextWindows, SotuMatchesReference) {
    // REFERENCE.md: 436729 tokens, 1705 windows of 256; the first window is the reference ids.
    const TokenData d = load_text_windows(sotu(), llama7m_tokenizer(), 256);
    EXPECT_EQ(d.n_tokens, 436729);
    EXPECT_EQ(d.n_available, 436729 / 256);
    EXPECT_EQ(d.n_available, 1705);
    EXPECT_EQ(d.tokens.scalar_type(), at::kLong);
    EXPECT_EQ(d.tokens.sizes(), (std::vector<int64_t>{1705, 256}));
    EXPECT_EQ(d.source, sotu());
    EXPECT_TRUE(at::equal(d.tokens[0], reference_ids()));
}

TEST(TextWindows, MaxSeqs) {
    const TokenData d = load_text_windows(sotu(), llama7m_tokenizer(), 256, 64);
    EXPECT_EQ(d.tokens.sizes(), (std::vector<int64_t>{64, 256}));
    EXPECT_EQ(d.n_available, 1705);
    EXPECT_TRUE(at::equal(d.tokens[0], reference_ids()));
}

TEST(TextWindows, WindowsAreConsecutiveAndTheTailIsDropped) {
    TempDir           tmp;
    const std::string text =
        "It was the best of times, it was the worst of times, it was the age "
        "of wisdom, it was the age of foolishness.";
    rq::io_test::write_file(tmp.file("short.txt"), text);
    const std::vector<int32_t> ids = rq::io::Tokenizer(llama7m_tokenizer()).encode(text);
    const int64_t              T   = 4;
    ASSERT_NE(ids.size() % T, 0u) << "pick a text whose token count leaves a tail";

    const TokenData d = load_text_windows(tmp.file("short.txt"), llama7m_tokenizer(), T);
    EXPECT_EQ(d.n_tokens, static_cast<int64_t>(ids.size()));
    EXPECT_EQ(d.n_available, static_cast<int64_t>(ids.size()) / T);
    ASSERT_EQ(d.tokens.sizes(), (std::vector<int64_t>{d.n_available, T}));
    for (int64_t i = 0; i < d.n_available; ++i)
        for (int64_t j = 0; j < T; ++j)
            EXPECT_EQ(d.tokens[i][j].item<int64_t>(), ids[static_cast<std::size_t>(i * T + j)])
                << "window " << i << ", position " << j;
}

TEST(TextWindowsErrors, TextShorterThanOneWindow) {
    TempDir tmp;
    rq::io_test::write_file(tmp.file("short.txt"), "Too short.");
    expect_error<rq::ConfigError>(
        [&] { load_text_windows(tmp.file("short.txt"), llama7m_tokenizer(), 256); },
        {"short.txt", "fewer than one window of 256"});
    rq::io_test::write_file(tmp.file("empty.txt"), "");
    expect_error<rq::ConfigError>(
        [&] { load_text_windows(tmp.file("empty.txt"), llama7m_tokenizer(), 256); },
        {"empty.txt", "fewer than one window"});
}

TEST(TextWindowsErrors, BadSeqLenOrMissingFiles) {
    TempDir tmp;
    expect_error<rq::ConfigError>([&] { load_text_windows(sotu(), llama7m_tokenizer(), 1); },
                                  {"sequence length"});
    expect_error<rq::IoError>(
        [&] { load_text_windows(tmp.file("absent.txt"), llama7m_tokenizer(), 256); },
        {"absent.txt"});
    expect_error<rq::IoError>([&] { load_text_windows(sotu(), tmp.file("absent.model"), 256); },
                              {"absent.model"});
}

// ---- load_eval_data --------------------------------------------------------------------------

TEST(EvalData, DispatchesOnExtension) {
    const TokenData tokens = load_eval_data(model_dir("stories260k") + "/eval-tokens.safetensors",
                                            model_dir("stories260k"), 256, 3);
    EXPECT_EQ(tokens.tokens.sizes(), (std::vector<int64_t>{3, 256}));
    // Text uses <model_dir>/tokenizer.model: windows of 128 are the reference ids in two rows.
    const TokenData text = load_eval_data(sotu(), model_dir("llama-7m-en"), 128, 2);
    EXPECT_EQ(text.tokens.sizes(), (std::vector<int64_t>{2, 128}));
    EXPECT_EQ(text.n_available, 436729 / 128);
    EXPECT_TRUE(at::equal(text.tokens.reshape({256}), reference_ids()));
}

TEST(EvalDataErrors, TextWithAModelThatHasNoTokenizer) {
    expect_error<rq::IoError>([] { load_eval_data(sotu(), model_dir("stories260k"), 256); },
                              {"stories260k: no usable tokenizer", "tokenizer.json",
                               "tokenizer.model", "pass a token dataset"});
}

}  // namespace
