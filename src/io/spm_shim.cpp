// librequant_spm: the only code that links libsentencepiece. Debian's sentencepiece carries its
// own protobuf-lite, which crashes libtorch's protobuf at start-up when both are linked into one
// executable (BUILD-NOTES §11). This library exports a plain C API and is dlopen'ed with
// RTLD_LOCAL | RTLD_DEEPBIND by requant/io/tokenizer.cpp, so the two protobufs never meet.
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define RQ_SPM_EXPORT extern "C" __attribute__((visibility("default")))

namespace {
void set_error(char* err, std::size_t n, const std::string& msg) {
    if (err == nullptr || n == 0) return;
    std::strncpy(err, msg.c_str(), n - 1);
    err[n - 1] = '\0';
}
}  // namespace

// Returns a handle, or nullptr with a message in err.
RQ_SPM_EXPORT void* rq_spm_load(const char* path, char* err, std::size_t errlen) {
    auto*      sp = new sentencepiece::SentencePieceProcessor();
    const auto st = sp->Load(path);
    if (!st.ok()) {
        set_error(err, errlen, st.ToString());
        delete sp;
        return nullptr;
    }
    return sp;
}

RQ_SPM_EXPORT void rq_spm_free(void* h) {
    delete static_cast<sentencepiece::SentencePieceProcessor*>(h);
}

// Encodes text (no BOS/EOS) into a malloc'ed array the caller frees with rq_spm_free_buffer.
// Returns 0 on success.
RQ_SPM_EXPORT int rq_spm_encode(void* h, const char* text, std::size_t len, int** ids,
                                std::size_t* n, char* err, std::size_t errlen) {
    std::vector<int> out;
    const auto       st = static_cast<sentencepiece::SentencePieceProcessor*>(h)->Encode(
              len ? std::string(text, len) : std::string(), &out);
    if (!st.ok()) {
        set_error(err, errlen, st.ToString());
        return 1;
    }
    *n   = out.size();
    *ids = static_cast<int*>(std::malloc(sizeof(int) * (out.empty() ? 1 : out.size())));
    if (*ids == nullptr) {
        set_error(err, errlen, "out of memory");
        return 1;
    }
    std::memcpy(*ids, out.data(), sizeof(int) * out.size());
    return 0;
}

RQ_SPM_EXPORT void rq_spm_free_buffer(void* p) {
    std::free(p);
}

// Decodes ids into a malloc'ed string of *len bytes (NUL-terminated too) the caller frees with
// rq_spm_free_buffer.
RQ_SPM_EXPORT int rq_spm_decode(void* h, const int* ids, std::size_t n, char** text,
                                std::size_t* len, char* err, std::size_t errlen) {
    std::string out;
    const auto  st = static_cast<sentencepiece::SentencePieceProcessor*>(h)->Decode(
         std::vector<int>(ids, ids + n), &out);
    if (!st.ok()) {
        set_error(err, errlen, st.ToString());
        return 1;
    }
    *text = static_cast<char*>(std::malloc(out.size() + 1));
    if (*text == nullptr) return 1;
    std::memcpy(*text, out.c_str(), out.size() + 1);
    *len = out.size();  // the text may hold NUL bytes (byte-fallback pieces)
    return 0;
}

RQ_SPM_EXPORT int rq_spm_vocab_size(void* h) {
    return static_cast<sentencepiece::SentencePieceProcessor*>(h)->GetPieceSize();
}
// 1 when no piece holds a space: U+2581 ("\xe2\x96\x81", sentencepiece's escaped space) only as
// its first character and ' ' nowhere. Then every segmentation breaks before each escaped
// space, and the text between two of them is encoded independently of the rest.
RQ_SPM_EXPORT int rq_spm_pieces_start_at_spaces(void* h) {
    const auto*       sp = static_cast<sentencepiece::SentencePieceProcessor*>(h);
    const std::string ws = "\xe2\x96\x81";
    for (int id = 0; id < sp->GetPieceSize(); ++id) {
        const std::string& piece = sp->IdToPiece(id);
        if (piece.find(' ') != std::string::npos) return 0;
        if (piece.find(ws, 1) != std::string::npos) return 0;
    }
    return 1;
}
RQ_SPM_EXPORT int rq_spm_bos_id(void* h) {
    return static_cast<sentencepiece::SentencePieceProcessor*>(h)->bos_id();
}
RQ_SPM_EXPORT int rq_spm_eos_id(void* h) {
    return static_cast<sentencepiece::SentencePieceProcessor*>(h)->eos_id();
}
