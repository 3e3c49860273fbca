#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

// A compiled PCRE2 pattern (UTF-8, Unicode properties, JIT when available) and a matcher that
// walks a text match by match. Used by the byte-level BPE pre-tokenizer (requant/io/bpe.h).

namespace rq::io {

class Regex {
  public:
    // Throws FormatError naming `origin` and PCRE2's message if the pattern does not compile.
    Regex(const std::string& pattern, const std::string& origin);
    ~Regex();
    Regex(const Regex&)            = delete;
    Regex& operator=(const Regex&) = delete;

    // One text's matches, left to right. The text must outlive the matcher. `offset`: where
    // the text starts in the input it was cut from, for the position in error messages.
    class Matcher {
      public:
        Matcher(const Regex& re, std::string_view text, long long offset = 0);
        ~Matcher();
        Matcher(const Matcher&)            = delete;
        Matcher& operator=(const Matcher&) = delete;
        // The next match at or after the end of the previous one: true and its [begin, end)
        // byte range, or false when there is none. The first call checks that the text is valid
        // UTF-8 (FormatError with the byte offset if not); later calls do not repeat it.
        bool next(std::size_t& begin, std::size_t& end);

      private:
        const Regex&     re_;
        std::string_view text_;
        void*            data_;  // pcre2_match_data_8
        long long        offset_;
        std::size_t      pos_     = 0;
        bool             checked_ = false;
    };

    const std::string& pattern() const { return pattern_; }

  private:
    std::string pattern_;
    std::string origin_;
    void*       code_ = nullptr;  // pcre2_code_8
    bool        jit_  = false;
};

// The offset of the first byte where `text` stops being valid UTF-8 (PCRE2's check: no overlong
// forms, surrogates or code points above U+10FFFF), or npos when all of it is.
std::size_t invalid_utf8_at(std::string_view text);

}  // namespace rq::io
