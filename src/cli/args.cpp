// Command-line values (requant/cli/args.h).
#include "requant/cli/args.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <utility>
#include <vector>

#include "requant/error.h"

namespace rq::cli {

int64_t parse_byte_size(const std::string& text) {
    std::string s;
    for (char c : text)
        if (!std::isspace(static_cast<unsigned char>(c)))
            s += char(std::toupper(static_cast<unsigned char>(c)));
    const std::vector<std::pair<std::string, double>> units = {
        {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0},
        {"KB", 1e3},     {"MB", 1e6},        {"GB", 1e9},           {"TB", 1e12},
        {"B", 1.0}};
    double scale = 1.0;
    for (const auto& [u, f] : units)
        if (s.size() > u.size() && s.compare(s.size() - u.size(), u.size(), u) == 0) {
            s.resize(s.size() - u.size());
            scale = f;
            break;
        }
    char*        end = nullptr;
    const double v   = s.empty() ? 0.0 : std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v) || v * scale < 1.0)
        throw ConfigError("'" + text +
                          "' is not a size: bytes, or a number with KB, MB, GB, TB (10^3 steps) "
                          "or KiB, MiB, GiB, TiB (2^10 steps)");
    return int64_t(std::floor(v * scale));
}

}  // namespace rq::cli
