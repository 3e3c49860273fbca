// Byte-level BPE model (requant/io/bpe.h).
#include "requant/io/bpe.h"

#include <algorithm>
#include <queue>

#include "requant/error.h"

namespace rq::io {
namespace {

std::string utf8(uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
}

// character (as a code point) -> byte, -1 where the character is not in the map
const std::unordered_map<uint32_t, int>& char_to_byte() {
    static const std::unordered_map<uint32_t, int> map = [] {
        std::unordered_map<uint32_t, int> m;
        uint32_t                          next = 256;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
            m[printable ? static_cast<uint32_t>(b) : next++] = b;
        }
        return m;
    }();
    return map;
}

}  // namespace

const std::array<std::string, 256>& byte_level_chars() {
    static const std::array<std::string, 256> chars = [] {
        std::array<std::string, 256> c;
        for (const auto& [cp, b] : char_to_byte()) c[static_cast<std::size_t>(b)] = utf8(cp);
        return c;
    }();
    return chars;
}

bool byte_level_decode(std::string_view token, std::string& bytes) {
    bytes.clear();
    for (std::size_t i = 0; i < token.size();) {
        const auto  c  = static_cast<unsigned char>(token[i]);
        uint32_t    cp = c;
        std::size_t n  = 1;
        if (c >= 0xE0) return false;  // every mapped character is below U+0800
        if (c >= 0xC0) {
            if (i + 1 >= token.size()) return false;
            cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(token[i + 1]) & 0x3Fu);
            n  = 2;
        } else if (c >= 0x80) {
            return false;
        }
        const auto it = char_to_byte().find(cp);
        if (it == char_to_byte().end()) return false;
        bytes += static_cast<char>(it->second);
        i += n;
    }
    return true;
}

BpeModel::BpeModel(const std::vector<std::pair<std::string, int32_t>>&     vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges,
                   bool ignore_merges, const std::string& origin)
    : origin_(origin), ignore_merges_(ignore_merges) {
    byte_ids_.fill(-1);
    int32_t max_id = -1;
    for (const auto& [tok, id] : vocab) max_id = std::max(max_id, id);
    bytes_.assign(static_cast<std::size_t>(max_id + 1), std::string());
    present_.assign(bytes_.size(), false);
    ids_.reserve(vocab.size());
    std::string raw;
    for (const auto& [tok, id] : vocab) {
        if (id < 0) throw FormatError(origin + ": token '" + tok + "' has a negative id");
        if (!byte_level_decode(tok, raw) || raw.empty())
            throw FormatError(origin + ": token '" + tok + "' (id " + std::to_string(id) +
                              ") is not a byte-level token");
        if (!ids_.emplace(raw, id).second || present_[static_cast<std::size_t>(id)])
            throw FormatError(origin + ": token '" + tok + "' (id " + std::to_string(id) +
                              ") repeats another token's bytes or id");
        bytes_[static_cast<std::size_t>(id)]   = raw;
        present_[static_cast<std::size_t>(id)] = true;
        if (raw.size() == 1) byte_ids_[static_cast<unsigned char>(raw[0])] = id;
    }
    merges_.reserve(merges.size());
    std::string a, b;
    for (std::size_t r = 0; r < merges.size(); ++r) {
        const auto& [ta, tb]   = merges[r];
        const std::string what = "merge " + std::to_string(r) + " ('" + ta + "' '" + tb + "')";
        if (!byte_level_decode(ta, a) || !byte_level_decode(tb, b))
            throw FormatError(origin + ": " + what + " is not byte-level");
        const auto ia = ids_.find(a), ib = ids_.find(b), im = ids_.find(a + b);
        if (ia == ids_.end() || ib == ids_.end() || im == ids_.end())
            throw FormatError(origin + ": " + what +
                              " names or makes a token not in the vocabulary");
        // A pair listed twice takes its last rank, as Hugging Face's map built from the list.
        merges_.insert_or_assign(key(ia->second, ib->second),
                                 Merge{static_cast<int32_t>(r), im->second});
    }
}

bool BpeModel::has(int32_t id) const {
    return id >= 0 && id < size() && present_[static_cast<std::size_t>(id)];
}

const BpeModel::Merge* BpeModel::find(int32_t a, int32_t b) const {
    const auto it = merges_.find(key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
}

int32_t BpeModel::byte_id(unsigned char b, std::string_view piece) const {
    const int32_t id = byte_ids_[b];
    if (id < 0)
        throw FormatError(origin_ + ": byte 0x" + "0123456789abcdef"[b >> 4] +
                          "0123456789abcdef"[b & 15] + " of '" + std::string(piece) +
                          "' has no token");
    return id;
}

void BpeModel::encode_piece_ref(std::string_view piece, std::vector<int32_t>& out) const {
    if (piece.empty()) return;
    if (ignore_merges_) {
        const auto it = ids_.find(std::string(piece));
        if (it != ids_.end()) return out.push_back(it->second);
    }
    std::vector<int32_t> sym;
    for (const char c : piece) sym.push_back(byte_id(static_cast<unsigned char>(c), piece));
    for (;;) {
        const Merge* best = nullptr;
        std::size_t  at   = 0;
        for (std::size_t i = 0; i + 1 < sym.size(); ++i) {
            const Merge* m = find(sym[i], sym[i + 1]);
            if (m != nullptr && (best == nullptr || m->rank < best->rank)) best = m, at = i;
        }
        if (best == nullptr) break;
        sym[at] = best->id;
        sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(at) + 1);
    }
    out.insert(out.end(), sym.begin(), sym.end());
}

void BpeModel::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
    if (piece.empty()) return;
    if (ignore_merges_) {
        const auto it = ids_.find(std::string(piece));
        if (it != ids_.end()) return out.push_back(it->second);
    }
    const int n = static_cast<int>(piece.size());
    struct Sym {
        int32_t id;
        int     prev, next;  // -1 at the ends
    };
    std::vector<Sym> sym(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
        sym[static_cast<std::size_t>(i)] = {byte_id(static_cast<unsigned char>(piece[i]), piece),
                                            i - 1, i + 1 < n ? i + 1 : -1};
    struct Cand {  // merge the symbol at `pos` with its next, `left` and `right` when pushed
        int32_t rank;
        int     pos;
        int32_t left, right, id;
        bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto                                                             push = [&](int pos) {
        if (pos < 0) return;
        const int nx = sym[static_cast<std::size_t>(pos)].next;
        if (nx < 0) return;
        const int32_t a = sym[static_cast<std::size_t>(pos)].id;
        const int32_t b = sym[static_cast<std::size_t>(nx)].id;
        if (const Merge* m = find(a, b)) heap.push({m->rank, pos, a, b, m->id});
    };
    for (int i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
        const Cand c = heap.top();
        heap.pop();
        Sym& s = sym[static_cast<std::size_t>(c.pos)];
        // Stale entries: the symbol was merged into its left (id -1), or either side changed.
        if (s.id != c.left || s.next < 0 || sym[static_cast<std::size_t>(s.next)].id != c.right)
            continue;
        Sym& r = sym[static_cast<std::size_t>(s.next)];
        s.id   = c.id;
        r.id   = -1;
        s.next = r.next;
        if (s.next >= 0) sym[static_cast<std::size_t>(s.next)].prev = c.pos;
        push(s.prev);
        push(c.pos);
    }
    for (int i = 0; i >= 0; i = sym[static_cast<std::size_t>(i)].next)
        out.push_back(sym[static_cast<std::size_t>(i)].id);
}

}  // namespace rq::io
