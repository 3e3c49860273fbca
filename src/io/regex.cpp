// PCRE2 pattern and matcher (requant/io/regex.h).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "requant/io/regex.h"

#include <pcre2.h>

#include "requant/error.h"

namespace rq::io {
namespace {

bool is_utf8_error(int rc) {
    return rc <= PCRE2_ERROR_UTF8_ERR1 && rc >= PCRE2_ERROR_UTF8_ERR21;
}

std::string pcre2_message(int code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(code, buf, sizeof(buf));
    return reinterpret_cast<const char*>(buf);
}

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& origin)
    : pattern_(pattern), origin_(origin) {
    int        err    = 0;
    PCRE2_SIZE offset = 0;
    code_             = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                      PCRE2_UTF | PCRE2_UCP, &err, &offset, nullptr);
    if (code_ == nullptr)
        throw FormatError(origin + ": regex does not compile at offset " + std::to_string(offset) +
                          ": " + pcre2_message(err) + ": " + pattern);
    jit_ = pcre2_jit_compile(static_cast<pcre2_code*>(code_), PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
    pcre2_code_free(static_cast<pcre2_code*>(code_));
}

Regex::Matcher::Matcher(const Regex& re, std::string_view text, long long offset)
    : re_(re),
      text_(text),
      data_(pcre2_match_data_create_from_pattern(static_cast<pcre2_code*>(re.code_), nullptr)),
      offset_(offset) {
    if (data_ == nullptr) throw InternalError("pcre2_match_data_create_from_pattern failed");
}

Regex::Matcher::~Matcher() {
    pcre2_match_data_free(static_cast<pcre2_match_data*>(data_));
}

bool Regex::Matcher::next(std::size_t& begin, std::size_t& end) {
    if (pos_ > text_.size()) return false;
    auto* const    code    = static_cast<pcre2_code*>(re_.code_);
    auto* const    md      = static_cast<pcre2_match_data*>(data_);
    const uint32_t options = checked_ ? PCRE2_NO_UTF_CHECK : 0;
    const auto*    subject = reinterpret_cast<PCRE2_SPTR>(text_.data());
    // The JIT fast path skips the argument checks; the first call goes through pcre2_match to
    // validate the UTF-8 of the whole text once.
    const int rc = (checked_ && re_.jit_)
                       ? pcre2_jit_match(code, subject, text_.size(), pos_, options, md, nullptr)
                       : pcre2_match(code, subject, text_.size(), pos_, options, md, nullptr);
    checked_     = true;
    if (rc == PCRE2_ERROR_NOMATCH) {
        pos_ = text_.size() + 1;
        return false;
    }
    if (is_utf8_error(rc))
        throw FormatError(
            re_.origin_ + ": the text is not valid UTF-8 at byte " +
            std::to_string(offset_ + static_cast<long long>(pcre2_get_startchar(md))) + " (" +
            pcre2_message(rc) + ")");
    if (rc < 0) throw FormatError(re_.origin_ + ": regex match failed: " + pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    begin                = ov[0];
    end                  = ov[1];
    // An empty match would repeat forever: step one character past it.
    if (end == begin) {
        std::size_t p = end + 1;
        while (p < text_.size() && (static_cast<unsigned char>(text_[p]) & 0xC0) == 0x80) ++p;
        pos_ = p;
    } else {
        pos_ = end;
    }
    return true;
}

std::size_t invalid_utf8_at(std::string_view text) {
    // pcre2_match checks the whole subject's UTF-8 before it matches; the empty pattern then
    // matches at once. Compiled once, kept for the process.
    static pcre2_code* const empty = [] {
        int        err    = 0;
        PCRE2_SIZE offset = 0;
        return pcre2_compile(reinterpret_cast<PCRE2_SPTR>(""), 0, PCRE2_UTF, &err, &offset,
                             nullptr);
    }();
    if (empty == nullptr) throw InternalError("pcre2_compile of the empty pattern failed");
    std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> md(
        pcre2_match_data_create_from_pattern(empty, nullptr), pcre2_match_data_free);
    if (!md) throw InternalError("pcre2_match_data_create_from_pattern failed");
    const int rc = pcre2_match(empty, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0, 0,
                               md.get(), nullptr);
    if (is_utf8_error(rc)) return pcre2_get_startchar(md.get());
    return std::string_view::npos;
}

}  // namespace rq::io
