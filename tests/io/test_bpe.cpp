// Tests of the byte-level BPE tokenizer (requant/io/bpe_tokenizer.h through
// requant/io/tokenizer.h) with the real Llama 3 tokenizer.json in ../shared/tokenizers/llama3:
// every id of two whole corpora and ten probe strings against reference-ids (made by two
// independent implementations), chunked and threaded encoding equal to one plain pass, the
// heap merge equal to the plain merge loop, round trips, the choice between tokenizer.json and
// tokenizer.model, and refusals.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io_fixtures.h"
#include "requant/error.h"
#include "requant/io/bpe.h"
#include "requant/io/safetensors.h"
#include "requant/io/tokenizer.h"

namespace {

using rq::io::Tokenizer;
using rq::io_test::data_path;
using rq::io_test::expect_error;
using rq::io_test::read_file;
using rq::io_test::TempDir;
using rq::io_test::write_file;

std::string llama3_dir() {
    return rq::io_test::tokenizer_dir("llama3");
}

const Tokenizer& llama3() {
    static const Tokenizer tok(llama3_dir() + "/tokenizer.json");
    return tok;
}

nlohmann::json reference() {
    return nlohmann::json::parse(read_file(llama3_dir() + "/reference-ids.json"));
}

// Text that exercises every alternative of the Llama 3 regex, contractions in both cases,
// digits, CR/LF runs, Unicode letters and marks, added tokens and near misses of them.
std::string tricky_text() {
    std::string s;
    for (int i = 0; i < 40; ++i)
        s += "The state's 12345 ships... I'M here, they'RE\r\n\n  \tthere   <|eot_id|>x<|eot "
             "naïve café — “quotes” 😀 日本語 <|begin_of_text|><|end_of_text|> a b  c\n"
             "word" +
             std::to_string(i * 7919) + " ====  ---\t\r\r\nend ";
    return s;
}

TEST(Bpe, Llama3SpecialIds) {
    EXPECT_EQ(llama3().vocab_size(), 128256);
    EXPECT_EQ(llama3().bos_id(), 128000);  // from tokenizer_config.json
    EXPECT_EQ(llama3().eos_id(), 128001);
    EXPECT_TRUE(llama3().byte_level());
    EXPECT_TRUE(llama3().chunked());
}

TEST(Bpe, Llama3ProbesMatchReference) {
    const nlohmann::json ref = reference();  // the loop below must not outlive it
    for (const auto& p : ref["probes"]) {
        const std::string text = p["text"].get<std::string>();
        EXPECT_EQ(llama3().encode(text), p["ids"].get<std::vector<int32_t>>()) << text;
        EXPECT_EQ(llama3().encode_ref(text), p["ids"].get<std::vector<int32_t>>()) << text;
        EXPECT_EQ(llama3().decode(llama3().encode(text)), text);
    }
}

TEST(Bpe, Llama3WholeCorporaMatchReference) {
    // reference-ids.safetensors: int32 [n] per corpus, the whole file encoded without BOS.
    rq::io::SafetensorsFile ref(llama3_dir() + "/reference-ids.safetensors");
    const nlohmann::json    summary = reference();
    for (const char* name : {"mobydick.txt", "sotu-1981-2021.txt"}) {
        const std::string text = read_file(data_path(name));
        Tokenizer         tok(llama3_dir() + "/tokenizer.json");
        tok.set_threads(2);
        const std::vector<int32_t> ids  = tok.encode(text);
        const at::Tensor           want = ref.load(name, at::kInt).contiguous();
        ASSERT_EQ(static_cast<int64_t>(ids.size()), want.numel()) << name;
        ASSERT_EQ(want.numel(), summary[name]["n_tokens"].get<int64_t>());
        int64_t mismatches = 0, sum = 0;
        for (int64_t i = 0; i < want.numel(); ++i) {
            mismatches += ids[static_cast<std::size_t>(i)] != want.data_ptr<int32_t>()[i];
            sum += ids[static_cast<std::size_t>(i)];
        }
        EXPECT_EQ(mismatches, 0) << name;
        EXPECT_EQ(sum, summary[name]["sum_ids"].get<int64_t>()) << name;
        EXPECT_EQ(tok.encode_ref(text), ids) << name << ": one plain pass differs";
        EXPECT_EQ(tok.decode(ids), text) << name;
    }
}

TEST(Bpe, ChunkedAndThreadedEncodeMatchOnePass) {
    const std::string text = tricky_text() + read_file(data_path("austen.txt")).substr(0, 200000);
    const std::vector<int32_t> whole = llama3().encode_ref(text);
    for (int threads : {1, 3}) {
        Tokenizer tok(llama3_dir() + "/tokenizer.json");
        tok.set_threads(threads);
        for (std::size_t chunk :
             {std::size_t{1}, std::size_t{17}, std::size_t{4096}, rq::io::kEncodeChunk})
            EXPECT_EQ(tok.encode(text, chunk), whole)
                << "threads " << threads << ", chunk " << chunk;
    }
}

TEST(Bpe, EncodeEachReportsProgressInOrder) {
    const std::string    text = tricky_text();
    std::vector<int32_t> ids;
    std::size_t          last = 0;
    llama3().encode_each(
        text,
        [&](const std::vector<int32_t>& chunk, std::size_t done) {
            EXPECT_GE(done, last);
            last = done;
            ids.insert(ids.end(), chunk.begin(), chunk.end());
        },
        64);
    EXPECT_EQ(last, text.size());
    EXPECT_EQ(ids, llama3().encode_ref(text));
}

TEST(Bpe, HeapMergeMatchesPlainMerge) {
    // Long single pieces (runs of punctuation, letters, spaces) and every two-byte piece.
    const auto json = nlohmann::json::parse(read_file(llama3_dir() + "/tokenizer.json"));
    std::vector<std::pair<std::string, int32_t>> vocab;
    for (const auto& [t, id] : json["model"]["vocab"].items()) vocab.emplace_back(t, id);
    std::vector<std::pair<std::string, std::string>> merges;
    for (const auto& m : json["model"]["merges"]) {
        const std::string s = m.get<std::string>();
        merges.emplace_back(s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1));
    }
    for (bool ignore : {false, true}) {
        const rq::io::BpeModel   model(vocab, merges, ignore, "llama3");
        std::vector<std::string> pieces = {std::string(3000, '='),
                                           std::string(2001, 'a'),
                                           std::string(999, ' '),
                                           "antidisestablishmentarianism",
                                           " Hello",
                                           "日本語のテキスト"};
        for (int a = 0; a < 256; a += 3)
            for (int b = 0; b < 256; b += 5) pieces.push_back({char(a), char(b)});
        for (const auto& p : pieces) {
            std::vector<int32_t> fast, ref;
            model.encode_piece(p, fast);
            model.encode_piece_ref(p, ref);
            EXPECT_EQ(fast, ref) << "piece of " << p.size() << " bytes";
        }
    }
}

TEST(Bpe, LocatePrefersByteLevelJsonThenSentencepiece) {
    TempDir d;
    expect_error<rq::IoError>([&] { Tokenizer::locate(d.path()); },
                              {d.path(), "tokenizer.json", "tokenizer.model"});
    // A Llama 2 style tokenizer.json (BPE without ByteLevel) beside a tokenizer.model: the model.
    write_file(d.file("tokenizer.json"),
               R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
                   "pre_tokenizer": null, "decoder": {"type": "ByteFallback"}})");
    write_file(d.file("tokenizer.model"),
               read_file(rq::io_test::model_dir("llama-7m-en") + "/tokenizer.model"));
    EXPECT_EQ(Tokenizer::locate(d.path()), d.file("tokenizer.model"));
    write_file(d.file("tokenizer.json"), read_file(llama3_dir() + "/tokenizer.json"));
    EXPECT_EQ(Tokenizer::locate(d.path()), d.file("tokenizer.json"));
    write_file(d.file("tokenizer.json"), "{ not json");
    expect_error<rq::FormatError>([&] { Tokenizer::locate(d.path()); },
                                  {d.file("tokenizer.json"), "not JSON"});
}

TEST(Bpe, RefusesInvalidUtf8WithItsOffset) {
    expect_error<rq::FormatError>([&] { llama3().encode("valid text \xff\xfe then"); },
                                  {"tokenizer.json", "not valid UTF-8 at byte 11"});
    // Past the first chunks the offset is still the input's.
    std::string long_text;
    while (long_text.size() < 200000) long_text += "plain words ";
    expect_error<rq::FormatError>([&] { llama3().encode(long_text + "\xc3(", 4096); },
                                  {"not valid UTF-8 at byte " + std::to_string(long_text.size())});
}

// `j` written as d/tokenizer.json is refused with a FormatError naming the file and `needles`.
void expect_refused(const TempDir& d, const nlohmann::json& j, std::vector<std::string> needles) {
    write_file(d.file("tokenizer.json"), j.dump());
    needles.push_back(d.file("tokenizer.json"));
    expect_error<rq::FormatError>([&] { Tokenizer tok(d.file("tokenizer.json")); }, needles);
}

TEST(Bpe, RefusesWhatItDoesNotImplement) {
    auto    json = nlohmann::json::parse(read_file(llama3_dir() + "/tokenizer.json"));
    TempDir d;
    auto    refused = [&](const nlohmann::json& j, const std::string& needle) {
        expect_refused(d, j, {needle});
    };
    auto j          = json;
    j["normalizer"] = {{"type", "NFC"}};
    refused(j, "normalizer NFC");
    j                                                  = json;
    j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "MergedWithPrevious";
    refused(j, "Isolated");
    j                     = json;
    j["model"]["dropout"] = 0.1;
    refused(j, "dropout");
    j = json;
    j["model"]["merges"].push_back("Ġ zzzzqqq");
    refused(j, "not in the vocabulary");
    j                                                          = json;
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
    refused(j, "regex does not compile");
}

// Found by fuzz_tokenizer_json (a vocab id of 5.55556e+49: its conversion to int was undefined
// behaviour): ids that are floats, negative or beyond int32 are refused, naming the token.
TEST(Bpe, RefusesIdsThatAreNotTokenIds) {
    auto    json = nlohmann::json::parse(read_file(llama3_dir() + "/tokenizer.json"));
    TempDir d;
    auto    refused = [&](const nlohmann::json& j, const std::string& needle) {
        expect_refused(d, j, {needle, "not a whole number"});
    };
    for (const nlohmann::json& bad : {nlohmann::json(5.55556e+49), nlohmann::json(12.5),
                                      nlohmann::json(-3), nlohmann::json(int64_t(1) << 40)}) {
        auto j                   = json;
        j["model"]["vocab"]["!"] = bad;
        refused(j, "vocab token '!'");
        j                          = json;
        j["added_tokens"][0]["id"] = bad;
        refused(j, "added token '<|begin_of_text|>'");
    }
}

}  // namespace
