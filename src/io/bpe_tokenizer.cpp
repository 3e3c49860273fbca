// Byte-level BPE tokenizer.json (requant/io/bpe_tokenizer.h).
#include "requant/io/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_map>

#include "requant/error.h"
#include "requant/io/bpe.h"
#include "requant/io/regex.h"

namespace rq::io {
namespace {

using nlohmann::json;

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex), and Llama 3's Split regex.
const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct AddedToken {
    std::string content;
    int32_t     id     = -1;
    bool        lstrip = false, rstrip = false;
};

struct Segment {  // a run of plain text, or one added token
    std::string_view text;
    int32_t          added = -1;  // id when this is an added token
    std::size_t      end   = 0;   // bytes of the input up to the end of this segment
};

// A token id as stored: a whole number in [0, 2^31 - 1). A float or an out-of-range number
// is refused before it is converted (a conversion out of range is undefined behaviour).
int32_t token_id(const json& v, const std::string& path, const std::string& what) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
        v.get<int64_t>() >= std::numeric_limits<int32_t>::max())
        throw FormatError(path + ": " + what + " has id " + v.dump().substr(0, 40) +
                          ", not a whole number in [0, 2^31 - 1)");
    return int32_t(v.get<int64_t>());
}

bool ascii_alpha(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool ascii_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

std::string type_of(const json& j) {
    return j.is_object() && j.contains("type") && j["type"].is_string()
               ? j["type"].get<std::string>()
               : std::string("?");
}

}  // namespace

bool is_byte_level_bpe(const json& j) {
    if (!j.is_object() || !j.contains("model") || type_of(j["model"]) != "BPE") return false;
    auto has_byte_level = [](const json& p) {
        if (type_of(p) == "ByteLevel") return true;
        if (type_of(p) == "Sequence")
            for (const char* list : {"pretokenizers", "decoders"})
                if (p.contains(list))
                    for (const auto& q : p[list])
                        if (type_of(q) == "ByteLevel") return true;
        return false;
    };
    return (j.contains("pre_tokenizer") && has_byte_level(j["pre_tokenizer"])) ||
           (j.contains("decoder") && has_byte_level(j["decoder"]));
}

struct BpeTokenizer::Impl {
    std::string                               path;
    std::unique_ptr<BpeModel>                 model;
    std::unique_ptr<Regex>                    split;
    bool                                      prefix_space = false;
    bool                                      chunkable    = false;
    std::vector<AddedToken>                   added;
    std::array<std::vector<std::size_t>, 256> added_by_byte;  // longest first
    std::unordered_map<int32_t, std::string>  added_content;
    int32_t                                   vocab = 0, bos = -1, eos = -1;

    void                 read_model(const json& m);
    void                 read_pre_tokenizer(const json& p);
    void                 read_added(const json& list);
    int32_t              special_id(const json& config, const char* key) const;
    std::vector<Segment> segments(std::string_view text) const;
};

void BpeTokenizer::Impl::read_model(const json& m) {
    const auto unsupported = [&](const std::string& what) {
        return FormatError(path + ": model." + what + " is not supported by this reader");
    };
    if (m.contains("dropout") && !m["dropout"].is_null()) throw unsupported("dropout");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
        if (m.contains(k) && !m[k].is_null() && m[k] != "") throw unsupported(k);
    if (m.value("byte_fallback", false)) throw unsupported("byte_fallback");
    std::vector<std::pair<std::string, int32_t>> tokens;
    tokens.reserve(m.at("vocab").size());
    for (const auto& [tok, id] : m.at("vocab").items())
        tokens.emplace_back(tok, token_id(id, path, "vocab token '" + tok.substr(0, 40) + "'"));
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(m.at("merges").size());
    for (const auto& e : m.at("merges")) {
        if (e.is_array() && e.size() == 2) {
            merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
            continue;
        }
        const std::string s  = e.get<std::string>();  // "a b": tokens hold no plain space
        const auto        sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
            throw FormatError(path + ": merge '" + s + "' is not two tokens");
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    }
    model = std::make_unique<BpeModel>(tokens, merges, m.value("ignore_merges", false), path);
    vocab = std::max(vocab, model->size());
}

void BpeTokenizer::Impl::read_pre_tokenizer(const json& p) {
    // Two shapes: ByteLevel that splits with GPT-2's regex itself, or Split(regex, Isolated)
    // followed by a ByteLevel that does not split.
    std::string pattern;
    auto        byte_level = [&](const json& b, bool splits) {
        if (b.value("use_regex", true) != splits)
            throw FormatError(path + ": pre_tokenizer ByteLevel with use_regex = " +
                                     (splits ? "false" : "true") + " here is not supported");
        prefix_space = b.value("add_prefix_space", false);
    };
    if (type_of(p) == "ByteLevel") {
        byte_level(p, true);
        pattern = kGpt2Pattern;
    } else if (type_of(p) == "Sequence" && p.contains("pretokenizers") &&
               p["pretokenizers"].size() == 2 && type_of(p["pretokenizers"][0]) == "Split" &&
               type_of(p["pretokenizers"][1]) == "ByteLevel") {
        const json& s = p["pretokenizers"][0];
        if (s.value("behavior", "") != "Isolated" || s.value("invert", false) ||
            !s.contains("pattern") || !s["pattern"].contains("Regex"))
            throw FormatError(path +
                              ": pre_tokenizer Split must be an Isolated, non-inverted "
                              "Regex split");
        pattern = s["pattern"]["Regex"].get<std::string>();
        byte_level(p["pretokenizers"][1], false);
        // There HF prefixes a space to every regex piece, not to the text: not implemented.
        if (prefix_space)
            throw FormatError(path +
                              ": pre_tokenizer ByteLevel with add_prefix_space after a "
                              "Split is not supported");
    } else {
        throw FormatError(path + ": pre_tokenizer " + p.dump().substr(0, 120) +
                          " is not supported (ByteLevel, or Split(Regex) then ByteLevel)");
    }
    split     = std::make_unique<Regex>(pattern, path);
    chunkable = pattern == kGpt2Pattern || pattern == kLlama3Pattern;
}

void BpeTokenizer::Impl::read_added(const json& list) {
    for (const auto& t : list) {
        AddedToken a;
        a.content = t.at("content").get<std::string>();
        a.id      = token_id(t.at("id"), path, "added token '" + a.content.substr(0, 40) + "'");
        a.lstrip  = t.value("lstrip", false);
        a.rstrip  = t.value("rstrip", false);
        if (a.content.empty()) throw FormatError(path + ": an added token is empty");
        if (t.value("single_word", false))
            throw FormatError(path + ": added token '" + a.content +
                              "' is single_word, which this reader does not implement");
        added_content[a.id] = a.content;
        vocab               = std::max(vocab, a.id + 1);
        added.push_back(std::move(a));
    }
    for (std::size_t i = 0; i < added.size(); ++i)
        added_by_byte[static_cast<unsigned char>(added[i].content[0])].push_back(i);
    for (auto& v : added_by_byte)
        std::stable_sort(v.begin(), v.end(), [&](std::size_t a, std::size_t b) {
            return added[a].content.size() > added[b].content.size();
        });
}

int32_t BpeTokenizer::Impl::special_id(const json& config, const char* key) const {
    if (!config.is_object() || !config.contains(key)) return -1;
    const json&       v       = config[key];
    const std::string content = v.is_string()   ? v.get<std::string>()
                                : v.is_object() ? v.value("content", std::string())
                                                : std::string();
    for (const auto& a : added)
        if (a.content == content) return a.id;
    return -1;
}

std::vector<Segment> BpeTokenizer::Impl::segments(std::string_view text) const {
    // Leftmost match of any added token, the longest at that position (as HF's Aho-Corasick).
    std::vector<Segment> out;
    std::size_t          plain = 0;  // start of the current run of plain text
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto&       cands = added_by_byte[static_cast<unsigned char>(text[i])];
        const AddedToken* hit   = nullptr;
        for (const std::size_t c : cands)
            if (text.compare(i, added[c].content.size(), added[c].content) == 0) {
                hit = &added[c];
                break;
            }
        if (hit == nullptr) continue;
        std::size_t b = i, e = i + hit->content.size();
        if (hit->lstrip)
            while (b > plain && ascii_space(text[b - 1])) --b;
        if (hit->rstrip)
            while (e < text.size() && ascii_space(text[e])) ++e;
        if (b > plain) out.push_back({text.substr(plain, b - plain), -1, b});
        out.push_back({std::string_view(), hit->id, e});
        plain = e;
        i     = e - 1;
    }
    if (plain < text.size()) out.push_back({text.substr(plain), -1, text.size()});
    return out;
}

BpeTokenizer::BpeTokenizer(const json& j, const json& config, const std::string& path)
    : impl_(std::make_unique<Impl>()) {
    impl_->path = path;
    try {
        if (!is_byte_level_bpe(j))
            throw FormatError(path + ": not a byte-level BPE tokenizer (model " +
                              type_of(j.value("model", json())) + ")");
        if (j.contains("normalizer") && !j["normalizer"].is_null())
            throw FormatError(path + ": normalizer " + type_of(j["normalizer"]) +
                              " is not supported by this reader");
        impl_->read_model(j.at("model"));
        impl_->read_pre_tokenizer(j.at("pre_tokenizer"));
        if (j.contains("added_tokens")) impl_->read_added(j["added_tokens"]);
    } catch (const json::exception& e) {
        throw FormatError(path + ": " + e.what());
    }
    impl_->bos = impl_->special_id(config, "bos_token");
    impl_->eos = impl_->special_id(config, "eos_token");
}

BpeTokenizer::~BpeTokenizer() = default;

bool BpeTokenizer::chunked() const {
    return impl_->chunkable;
}
int BpeTokenizer::vocab_size() const {
    return impl_->vocab;
}
int BpeTokenizer::bos_id() const {
    return impl_->bos;
}
int BpeTokenizer::eos_id() const {
    return impl_->eos;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
    std::string out;
    for (const int32_t id : ids) {
        const auto a = impl_->added_content.find(id);
        if (a != impl_->added_content.end())
            out += a->second;
        else if (impl_->model->has(id))
            out += impl_->model->bytes_of(id);
        else
            throw FormatError(impl_->path + ": id " + std::to_string(id) +
                              " is not in the vocabulary");
    }
    return out;
}

// ---- encoding --------------------------------------------------------------------------------
namespace {

using Cache                        = std::unordered_map<std::string, std::vector<int32_t>>;
constexpr std::size_t kCachedPiece = 64;       // bytes; longer pieces are not cached
constexpr std::size_t kCacheCap    = 1 << 20;  // entries; the cache is emptied past this

struct Job {  // a chunk of plain text, or one added token
    std::string_view text;
    bool             first = false;  // the first chunk of its run of plain text
    int32_t          added = -1;
    std::size_t      end   = 0;
};

// The ids of a run of plain text (or a chunk of it): regex pieces, and the gaps between them,
// each encoded by the BPE model. `cache` null: encode_piece_ref, nothing cached.
// `offset`: where the text starts in the input (error messages).
void encode_plain(const BpeModel& model, const Regex& split, bool prefix_space,
                  std::string_view text, std::size_t offset, Cache* cache,
                  std::vector<int32_t>& out) {
    std::string prefixed;
    long long   at = static_cast<long long>(offset);
    if (prefix_space && !text.empty() && text[0] != ' ') {
        prefixed = " " + std::string(text);
        text     = prefixed;
        at -= 1;
    }
    auto piece = [&](std::string_view p) {
        if (cache == nullptr) return model.encode_piece_ref(p, out);
        if (p.size() > kCachedPiece) return model.encode_piece(p, out);
        std::string key(p);
        auto        it = cache->find(key);
        if (it == cache->end()) {
            if (cache->size() >= kCacheCap) cache->clear();
            std::vector<int32_t> ids;
            model.encode_piece(p, ids);
            it = cache->emplace(std::move(key), std::move(ids)).first;
        }
        out.insert(out.end(), it->second.begin(), it->second.end());
    };
    Regex::Matcher m(split, text, at);
    std::size_t    pos = 0, b = 0, e = 0;
    while (m.next(b, e)) {
        if (b > pos) piece(text.substr(pos, b - pos));  // Isolated: a gap is a piece too
        piece(text.substr(b, e - b));
        pos = std::max(pos, e);
    }
    if (pos < text.size()) piece(text.substr(pos));
}

// Cuts before single spaces between ASCII letters, at least `target` bytes apart. No match of
// the known patterns holds a letter followed by a space, and from such a space on they match
// " word" whatever follows the cut, so the pieces (and ids) are those of the whole text.
void cut_chunks(std::string_view text, std::size_t base, std::size_t target,
                std::vector<Job>& jobs) {
    std::size_t begin = 0, i = target;
    while (i + 1 < text.size()) {
        if (text[i] == ' ' && ascii_alpha(text[i - 1]) && ascii_alpha(text[i + 1])) {
            jobs.push_back({text.substr(begin, i - begin), begin == 0, -1, base + i});
            begin = i;
            i     = begin + target;
        } else {
            ++i;
        }
    }
    jobs.push_back({text.substr(begin), begin == 0, -1, base + text.size()});
}

}  // namespace

void BpeTokenizer::encode_each(std::string_view text, const ChunkFn& fn, std::size_t chunk,
                               int threads) const {
    const Impl&        t = *impl_;
    const std::size_t  n = static_cast<std::size_t>(std::max(1, threads));
    std::vector<Cache> caches(n);
    std::vector<Job>   jobs;
    auto               run = [&](const Job& j, Cache& cache, std::vector<int32_t>& ids) {
        if (j.added >= 0) return ids.push_back(j.added);
        encode_plain(*t.model, *t.split, t.prefix_space && j.first, j.text, j.end - j.text.size(),
                                   &cache, ids);
    };
    auto flush = [&] {
        std::vector<std::vector<int32_t>> ids(jobs.size());
        if (n == 1 || jobs.size() == 1) {
            for (std::size_t k = 0; k < jobs.size(); ++k) run(jobs[k], caches[0], ids[k]);
        } else {
            std::vector<std::exception_ptr> errors(n);
            std::vector<std::thread>        pool;
            try {
                for (std::size_t w = 0; w < n; ++w)
                    pool.emplace_back([&, w] {
                        try {
                            for (std::size_t k = w; k < jobs.size(); k += n)
                                run(jobs[k], caches[w], ids[k]);
                        } catch (...) {
                            errors[w] = std::current_exception();
                        }
                    });
            } catch (...) {  // a thread could not start: the started ones still finish
                for (auto& th : pool) th.join();
                throw;
            }
            for (auto& th : pool) th.join();
            for (const auto& e : errors)
                if (e) std::rethrow_exception(e);
        }
        for (std::size_t k = 0; k < jobs.size(); ++k) fn(ids[k], jobs[k].end);
        jobs.clear();
    };
    for (const Segment& s : t.segments(text)) {
        const std::size_t base = s.end - s.text.size();
        if (s.added >= 0)
            jobs.push_back({std::string_view(), false, s.added, s.end});
        else if (t.chunkable)
            cut_chunks(s.text, base, std::max<std::size_t>(chunk, 1), jobs);
        else
            jobs.push_back({s.text, true, -1, s.end});
        if (jobs.size() >= 4 * n) flush();
    }
    flush();
}

std::vector<int32_t> BpeTokenizer::encode_ref(std::string_view text) const {
    std::vector<int32_t> out;
    for (const Segment& s : impl_->segments(text)) {
        if (s.added >= 0)
            out.push_back(s.added);
        else
            encode_plain(*impl_->model, *impl_->split, impl_->prefix_space, s.text,
                         s.end - s.text.size(), nullptr, out);
    }
    return out;
}

}  // namespace rq::io
