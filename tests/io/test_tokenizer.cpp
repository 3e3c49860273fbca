// Tests of the sentencepiece tokenizer (requant/io/tokenizer.h) with llama-7m-en's
// tokenizer.model: special ids, agreement with the reference token ids of REFERENCE.md, round
// trips, and refusal of missing, empty and non-sentencepiece files.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io_fixtures.h"
#include "requant/error.h"
#include "requant/io/safetensors.h"
#include "requant/io/tokenizer.h"

namespace {

using rq::io::Tokenizer;
using rq::io_test::data_path;
using rq::io_test::expect_error;
using rq::io_test::model_dir;
using rq::io_test::TempDir;

std::string llama7m_tokenizer() {
    return model_dir("llama-7m-en") + "/tokenizer.model";
}

TEST(Tokenizer, SpecialIds) {
    Tokenizer tok(llama7m_tokenizer());
    EXPECT_EQ(tok.vocab_size(), 4096);
    EXPECT_EQ(tok.bos_id(), 1);
    EXPECT_EQ(tok.eos_id(), 2);
}

TEST(Tokenizer, WholeFileMatchesReference) {
    // REFERENCE.md: the file is encoded whole, without BOS; reference.safetensors `tokens`
    // (int32 [4, 64]) holds its first 4 x 64 ids, row-major.
    Tokenizer                  tok(llama7m_tokenizer());
    const std::vector<int32_t> ids =
        tok.encode(rq::io_test::read_file(data_path("sotu-1981-2021.txt")));
    EXPECT_EQ(ids.size(), 436729u);

    rq::io::SafetensorsFile ref(model_dir("llama-7m-en") + "/reference.safetensors");
    const at::Tensor        want = ref.load("tokens", at::kInt).contiguous();
    ASSERT_EQ(want.sizes(), (std::vector<int64_t>{4, 64}));
    const std::vector<int32_t> want_ids(want.data_ptr<int32_t>(), want.data_ptr<int32_t>() + 256);
    ASSERT_GE(ids.size(), 256u);
    EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + 256), want_ids);
}

TEST(Tokenizer, SpaceChunksCutOnlyAtSingleSpacesBetweenAlphanumerics) {
    const std::string text = "ab cd  ef\tgh ij.  kl mn";
    for (std::size_t target = 0; target <= text.size(); ++target) {
        SCOPED_TRACE(target);
        const auto  chunks = rq::io::space_chunks(text, target);
        std::string joined;
        for (std::size_t c = 0; c < chunks.size(); ++c) {
            if (c > 0) {
                const std::size_t at = joined.size();  // the dropped space's position
                ASSERT_LT(at + 1, text.size());
                EXPECT_EQ(text[at], ' ');
                EXPECT_NE(text[at - 1], ' ');
                EXPECT_NE(text[at + 1], ' ');
                if (c > 1) {
                    EXPECT_GE(chunks[c - 1].size(), target);
                }
                joined += ' ';
            }
            joined += chunks[c];
        }
        EXPECT_EQ(joined, text);
    }
    EXPECT_EQ(rq::io::space_chunks("", 4).size(), 1u);
    EXPECT_EQ(rq::io::space_chunks("abcdef", 1).size(), 1u);  // no space: one chunk
}

TEST(Tokenizer, ChunkedEncodeMatchesWholeTextEncode) {
    Tokenizer tok(llama7m_tokenizer());
    ASSERT_TRUE(tok.chunked());
    // Every cut point, on text with runs of spaces, newlines, digits and byte fallback.
    const std::string tricky =
        "Mr. Speaker  and 1981 budget\nThe  state of 2 unions  is\tstrong x y z "
        "na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 end";
    for (const std::size_t chunk : {1, 2, 3, 5, 8, 13}) {
        SCOPED_TRACE(chunk);
        EXPECT_EQ(tok.encode(tricky, chunk), tok.encode_ref(tricky));
    }
    for (const char* file : {"mobydick.txt", "austen.txt", "sotu-1981-2021.txt"}) {
        SCOPED_TRACE(file);
        const std::string text = rq::io_test::read_file(data_path(file));
        EXPECT_EQ(tok.encode(text), tok.encode_ref(text));
        EXPECT_EQ(tok.encode(text, 997), tok.encode_ref(text));
    }
}

TEST(Tokenizer, EncodeAddsNoBosOrEos) {
    Tokenizer  tok(llama7m_tokenizer());
    const auto ids = tok.encode("The state of the union is strong.");
    ASSERT_FALSE(ids.empty());
    EXPECT_NE(ids.front(), tok.bos_id());
    EXPECT_NE(ids.back(), tok.eos_id());
    for (const int32_t id : ids) {
        EXPECT_GE(id, 0);
        EXPECT_LT(id, tok.vocab_size());
    }
    EXPECT_TRUE(tok.encode("").empty());
}

TEST(Tokenizer, DecodeInvertsEncode) {
    Tokenizer tok(llama7m_tokenizer());
    for (const std::string s :
         {"Mr. Speaker, Mr. President, distinguished Members of Congress, 1981.",
          "  two leading spaces, tabs\tand a newline\nhere",
          "Non-ASCII through byte fallback: na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 \xe6\x97\xa5"}) {
        SCOPED_TRACE(s);
        const auto ids = tok.encode(s);
        EXPECT_EQ(tok.decode(ids), s);
    }
}

TEST(Tokenizer, DecodeKeepsNulBytes) {
    // Byte fallback can produce any byte, NUL included; decode must not stop at it.
    Tokenizer         tok(llama7m_tokenizer());
    const std::string s("a\0b", 3);
    EXPECT_EQ(tok.decode(tok.encode(s)), s);
}

TEST(TokenizerErrors, MissingFile) {
    TempDir tmp;
    expect_error<rq::IoError>([&] { Tokenizer tok(tmp.file("tokenizer.model")); },
                              {tmp.file("tokenizer.model")});
}

TEST(TokenizerErrors, NotASentencepieceModel) {
    TempDir tmp;
    rq::io_test::write_file(tmp.file("tokenizer.model"),
                            "\xde\xad\xbe\xef this is not a protobuf \xff\xff\xff");
    expect_error<rq::FormatError>([&] { Tokenizer tok(tmp.file("tokenizer.model")); },
                                  {tmp.file("tokenizer.model"), "sentencepiece"});
}

TEST(TokenizerErrors, EmptyFile) {
    TempDir tmp;
    rq::io_test::write_file(tmp.file("tokenizer.model"), "");
    expect_error<rq::FormatError>([&] { Tokenizer tok(tmp.file("tokenizer.model")); },
                                  {tmp.file("tokenizer.model"), "empty"});
}

}  // namespace
