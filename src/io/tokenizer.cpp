// A model's tokenizer: byte-level BPE, or sentencepiece through the dlopen'ed shim
// (requant/io/tokenizer.h).
#include "requant/io/tokenizer.h"

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <utility>

#include "requant/error.h"
#include "requant/io/bpe_tokenizer.h"
#include "requant/io/mmap_file.h"

#ifndef RQ_SPM_SHIM_FILE
#error "RQ_SPM_SHIM_FILE must name the shim library (set by CMake)"
#endif

namespace rq::io {
namespace {

struct ShimApi {
    void* (*load)(const char*, char*, std::size_t) = nullptr;
    void (*free_handle)(void*)                     = nullptr;
    int (*encode)(void*, const char*, std::size_t, int**, std::size_t*, char*,
                  std::size_t)                     = nullptr;
    void (*free_buffer)(void*)                     = nullptr;
    int (*decode)(void*, const int*, std::size_t, char**, std::size_t*, char*,
                  std::size_t)                     = nullptr;
    int (*vocab_size)(void*)                       = nullptr;
    int (*bos_id)(void*)                           = nullptr;
    int (*eos_id)(void*)                           = nullptr;
    int (*pieces_start_at_spaces)(void*)           = nullptr;
};

bool exists(const std::string& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0;
}

std::string exe_dir() {
    char       buf[4096];
    const auto n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n <= 0) return ".";
    std::string p(buf, static_cast<std::size_t>(n));
    return p.substr(0, p.find_last_of('/'));
}

template <typename F>
void bind_symbol(void* lib, const char* name, F& fn, const std::string& path) {
    fn = reinterpret_cast<F>(::dlsym(lib, name));
    if (fn == nullptr) throw IoError(path + ": symbol " + name + " not found");
}

const ShimApi& shim() {
    static ShimApi        api;
    static std::string    error;
    static std::once_flag once;
    std::call_once(once, [] {
        std::vector<std::string> candidates;
        if (const char* env = std::getenv("RQ_SPM_SHIM")) candidates.push_back(env);
        const std::string d = exe_dir();
        for (const char* sub : {"", "../lib", "../lib/requant"})
            candidates.push_back(d + "/" + sub + (*sub ? "/" : "") + RQ_SPM_SHIM_FILE);
        std::string path;
        for (const auto& c : candidates)
            if (exists(c)) {
                path = c;
                break;
            }
        if (path.empty()) {
            error = std::string("tokenizer shim ") + RQ_SPM_SHIM_FILE + " not found (looked in " +
                    candidates.back() + " and beside the executable; set RQ_SPM_SHIM)";
            return;
        }
        void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
        if (lib == nullptr) {
            error = path + ": cannot load: " + ::dlerror();
            return;
        }
        try {
            bind_symbol(lib, "rq_spm_load", api.load, path);
            bind_symbol(lib, "rq_spm_free", api.free_handle, path);
            bind_symbol(lib, "rq_spm_encode", api.encode, path);
            bind_symbol(lib, "rq_spm_free_buffer", api.free_buffer, path);
            bind_symbol(lib, "rq_spm_decode", api.decode, path);
            bind_symbol(lib, "rq_spm_vocab_size", api.vocab_size, path);
            bind_symbol(lib, "rq_spm_bos_id", api.bos_id, path);
            bind_symbol(lib, "rq_spm_eos_id", api.eos_id, path);
            bind_symbol(lib, "rq_spm_pieces_start_at_spaces", api.pieces_start_at_spaces, path);
        } catch (const Error& e) {
            error = e.what();
        }
    });
    if (!error.empty()) throw IoError(error);
    return api;
}

}  // namespace

struct Tokenizer::Impl {
    std::string                   path;
    std::unique_ptr<BpeTokenizer> bpe;  // a tokenizer.json; otherwise sentencepiece:
    void*                         handle = nullptr;
    bool separable = false;  // encode(a + " " + b) == encode(a) ++ encode(b), see below
    int  threads   = 1;
    ~Impl() {
        if (handle) shim().free_handle(handle);
    }
};

namespace {

bool alnum(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

}  // namespace

std::vector<std::string_view> space_chunks(std::string_view text, std::size_t target) {
    std::vector<std::string_view> out;
    std::size_t                   begin = 0;
    std::size_t                   i     = target;
    while (i + 1 < text.size()) {
        if (text[i] == ' ' && i > begin && alnum(text[i - 1]) && alnum(text[i + 1])) {
            out.push_back(text.substr(begin, i - begin));
            begin = i + 1;  // the space is the next chunk's dummy prefix
            i     = begin + target;
        } else {
            ++i;
        }
    }
    out.push_back(text.substr(begin));
    return out;
}

namespace {

bool ends_with(const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

nlohmann::json read_json(const std::string& path) {
    MappedFile f(path);
    try {
        return nlohmann::json::parse(reinterpret_cast<const char*>(f.data()),
                                     reinterpret_cast<const char*>(f.data()) + f.size());
    } catch (const nlohmann::json::exception& e) {
        throw FormatError(path + ": not JSON: " + e.what());
    }
}

std::string folder_of(const std::string& path) {
    const auto slash = path.find_last_of('/');
    return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

Tokenizer Tokenizer::for_model(const std::string& model_dir) {
    const std::string json_path = model_dir + "/tokenizer.json";
    const std::string spm_path  = model_dir + "/tokenizer.model";
    if (exists(json_path)) {  // parsed once: a Llama 3 tokenizer.json is 9 MB of JSON
        const nlohmann::json json = read_json(json_path);
        if (is_byte_level_bpe(json)) return Tokenizer(json_path, json);
    }
    if (exists(spm_path)) return Tokenizer(spm_path);
    throw IoError(model_dir + ": no usable tokenizer (neither a byte-level BPE tokenizer.json " +
                  "nor a sentencepiece tokenizer.model)");
}

std::string Tokenizer::locate(const std::string& model_dir) {
    return for_model(model_dir).path();
}

Tokenizer::Tokenizer(const std::string& json_path, const nlohmann::json& json)
    : impl_(std::make_unique<Impl>()) {
    const std::string config = folder_of(json_path) + "/tokenizer_config.json";
    impl_->path              = json_path;
    impl_->bpe               = std::make_unique<BpeTokenizer>(
        json, exists(config) ? read_json(config) : nlohmann::json(), json_path);
}

Tokenizer::Tokenizer(const std::string& path) : impl_(std::make_unique<Impl>()) {
    impl_->path = path;
    // Check readability ourselves: sentencepiece's own message for a missing file is terse.
    {
        MappedFile probe(path);
        if (probe.size() == 0) throw FormatError(path + ": tokenizer file is empty");
    }
    if (ends_with(path, ".json")) {
        *this = Tokenizer(path, read_json(path));
        return;
    }
    const ShimApi& api      = shim();
    char           err[512] = {0};
    impl_->handle           = api.load(path.c_str(), err, sizeof(err));
    if (impl_->handle == nullptr) throw FormatError(path + ": not a sentencepiece model: " + err);
    // Chunked encoding is exact when no piece spans an escaped space (checked on the whole
    // vocabulary) and the model adds the dummy prefix the dropped space stands for (probed).
    if (api.pieces_start_at_spaces(impl_->handle) != 1) return;
    for (const auto& [a, b] : {std::pair{"the", "state"}, {"Union", "1981"}, {"a", "b"}}) {
        std::vector<int32_t> cat = encode_ref(a), rhs = encode_ref(b);
        cat.insert(cat.end(), rhs.begin(), rhs.end());
        if (encode_ref(std::string(a) + " " + b) != cat) return;
    }
    impl_->separable = true;
}

Tokenizer::~Tokenizer() = default;  // Impl frees the sentencepiece handle (moves too)
Tokenizer::Tokenizer(Tokenizer&&) noexcept            = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

const std::string& Tokenizer::path() const {
    return impl_->path;
}
bool Tokenizer::byte_level() const {
    return impl_->bpe != nullptr;
}
void Tokenizer::set_threads(int threads) {
    impl_->threads = std::max(1, threads);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, std::size_t chunk) const {
    std::vector<int32_t> out;
    encode_each(
        text,
        [&](const std::vector<int32_t>& ids, std::size_t) {
            out.insert(out.end(), ids.begin(), ids.end());
        },
        chunk);
    return out;
}

void Tokenizer::encode_each(std::string_view text, const ChunkFn& fn, std::size_t chunk) const {
    if (impl_->bpe) return impl_->bpe->encode_each(text, fn, chunk, impl_->threads);
    // sentencepiece holds tens of bytes per input byte while it encodes (about 1 GiB for a
    // 9 MB text); chunks at single spaces between letters or digits keep that small.
    if (!impl_->separable) return fn(encode_ref(text), text.size());
    for (const std::string_view piece : space_chunks(text, chunk))
        fn(encode_ref(piece), static_cast<std::size_t>(piece.data() - text.data()) + piece.size());
}

bool Tokenizer::chunked() const {
    return impl_->bpe ? impl_->bpe->chunked() : impl_->separable;
}

std::vector<int32_t> Tokenizer::encode_ref(std::string_view text) const {
    if (impl_->bpe) return impl_->bpe->encode_ref(text);
    int*        ids      = nullptr;
    std::size_t n        = 0;
    char        err[512] = {0};
    if (shim().encode(impl_->handle, text.data(), text.size(), &ids, &n, err, sizeof(err)) != 0)
        throw FormatError(impl_->path + ": encode failed: " + err);
    std::vector<int32_t> out(ids, ids + n);
    shim().free_buffer(ids);
    return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
    if (impl_->bpe) return impl_->bpe->decode(ids);
    char*       text     = nullptr;
    std::size_t len      = 0;
    char        err[512] = {0};
    if (shim().decode(impl_->handle, ids.data(), ids.size(), &text, &len, err, sizeof(err)) != 0)
        throw FormatError(impl_->path + ": decode failed: " + err);
    std::string out(text, len);
    shim().free_buffer(text);
    return out;
}

int Tokenizer::vocab_size() const {
    if (impl_->bpe) return impl_->bpe->vocab_size();
    return shim().vocab_size(impl_->handle);
}
int Tokenizer::bos_id() const {
    if (impl_->bpe) return impl_->bpe->bos_id();
    return shim().bos_id(impl_->handle);
}
int Tokenizer::eos_id() const {
    if (impl_->bpe) return impl_->bpe->eos_id();
    return shim().eos_id(impl_->handle);
}

}  // namespace rq::io
