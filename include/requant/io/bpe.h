#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

// Byte-level BPE (GPT-2, Llama 3): the vocabulary and merge ranks of a tokenizer.json `model`,
// and the ids of one pre-tokenized piece. Tokens are held as the raw bytes they stand for, so
// a piece is looked up without mapping it to GPT-2's printable byte characters first.

namespace rq::io {

// GPT-2's byte <-> character map: the UTF-8 of the character byte b is written as in a
// byte-level vocabulary (printable Latin-1 bytes as themselves, the others from U+0100 on).
const std::array<std::string, 256>& byte_level_chars();
// The raw bytes a byte-level token string stands for; false if a character is not in the map.
bool byte_level_decode(std::string_view token, std::string& bytes);

class BpeModel {
  public:
    // vocab: byte-level token string -> id; merges: pairs of byte-level strings, by rank.
    // Throws FormatError naming `origin` if a token is not byte-level, two tokens stand for the
    // same bytes, or a merge names or makes a token not in the vocabulary.
    BpeModel(const std::vector<std::pair<std::string, int32_t>>&     vocab,
             const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges,
             const std::string& origin);

    // Appends the ids of `piece` (raw bytes). Merges the lowest-ranked adjacent pair first,
    // leftmost among equals, with a heap; `ignore_merges` models take a piece that is itself a
    // token whole. encode_piece_ref: the same, by a plain scan for the best pair per merge.
    void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
    void encode_piece_ref(std::string_view piece, std::vector<int32_t>& out) const;

    const std::string& bytes_of(int32_t id) const { return bytes_[static_cast<std::size_t>(id)]; }
    bool               has(int32_t id) const;
    int32_t            size() const { return static_cast<int32_t>(bytes_.size()); }

  private:
    struct Merge {
        int32_t rank;
        int32_t id;  // the merged token
    };
    static uint64_t key(int32_t a, int32_t b) {
        return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    }
    const Merge* find(int32_t a, int32_t b) const;
    int32_t      byte_id(unsigned char b, std::string_view piece) const;

    std::string                              origin_;
    bool                                     ignore_merges_ = false;
    std::unordered_map<std::string, int32_t> ids_;    // raw bytes -> id
    std::vector<std::string>                 bytes_;  // id -> raw bytes ("" for no token)
    std::vector<bool>                        present_;
    std::array<int32_t, 256>                 byte_ids_{};  // -1 where a byte has no token
    std::unordered_map<uint64_t, Merge>      merges_;
};

}  // namespace rq::io
