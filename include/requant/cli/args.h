#pragma once
#include <cstdint>
#include <string>

// Values of command-line options that need more than CLI11's checks.

namespace rq::cli {

// A size in bytes as Hugging Face spells it: a whole number of bytes ("1000000"), or a number
// with a unit, decimal KB MB GB TB (10^3...) or binary KiB MiB GiB TiB (2^10...), letters in
// any case ("5GB", "500MB", "1.5GiB"). Throws ConfigError for anything else or a size < 1.
int64_t parse_byte_size(const std::string& text);

}  // namespace rq::cli
