// libFuzzer: a job file and --set overrides. The input is the TOML text, then optionally a
// line "#--set" and one override per line.
#include <sstream>
#include <vector>

#include "fuzz_common.h"
#include "requant/io/job.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string              text(reinterpret_cast<const char*>(data), size);
    std::vector<std::string> sets;
    if (const auto cut = text.find("\n#--set\n"); cut != std::string::npos) {
        std::istringstream lines(text.substr(cut + 8));
        for (std::string l; std::getline(lines, l);) sets.push_back(l);
        text.resize(cut + 1);
    }
    const std::string origin = rq::fuzz::scratch() + "/job.toml";  // named, never read
    return rq::fuzz::refuse_only_with_errors([&] {
        const rq::io::Job j = rq::io::parse_job(text, origin, sets);
        // What parses must print and parse back to the same job.
        if (!(rq::io::parse_job(rq::io::job_to_toml(j), origin) == j)) std::abort();
    });
}
