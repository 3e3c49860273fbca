// bench_tokenizer: encoding speed of a tokenizer (tokenizer.json or tokenizer.model) on a text
// file, in MB/s of input: the plain pass (encode_ref: one pass, no cache), then encode on one
// thread and on --threads threads (chunks cut where the ids cannot change), best of --repeat
// runs each; checks that all three give the same ids. Run through launch/bench.sh or alone:
//   bench_tokenizer --tokenizer ../shared/tokenizers/llama3/tokenizer.json
//                   --text ../shared/data/sotu-1790-1980.txt [--threads 2] [--repeat 3]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "bench_args.h"
#include "requant/io/mmap_file.h"
#include "requant/io/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds(const std::function<void()>& fn, int repeat) {
    double best = 1e300;
    for (int i = 0; i < repeat; ++i) {
        const auto t0 = Clock::now();
        fn();
        best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) try {
    const rq::bench::Args a(argc, argv, {"tokenizer", "text", "threads", "repeat"},
                            "bench_tokenizer --tokenizer FILE --text FILE [--threads N] "
                            "[--repeat R]");
    const std::string     tok_path = a.str("tokenizer"), text_path = a.str("text");
    if (tok_path.empty() || text_path.empty())
        throw std::runtime_error("--tokenizer and --text are required");
    int threads =
        static_cast<int>(a.integer("threads", std::max(1u, std::thread::hardware_concurrency())));
    const int repeat = static_cast<int>(a.integer("repeat", 3));

    const auto         t0 = Clock::now();
    rq::io::Tokenizer  tok(tok_path);
    const double       load_s = std::chrono::duration<double>(Clock::now() - t0).count();
    rq::io::MappedFile file(text_path);
    const std::string  text(reinterpret_cast<const char*>(file.data()), file.size());
    const double       mb = static_cast<double>(text.size()) / 1e6;
    std::printf("tokenizer %s (%s, loaded in %.2f s)\ntext %s: %.2f MB\n", tok_path.c_str(),
                tok.byte_level() ? "byte-level BPE" : "sentencepiece", load_s, text_path.c_str(),
                mb);

    if (!tok.byte_level()) threads = 1;  // sentencepiece encodes on one thread
    std::vector<int32_t> ref, one, many;
    const double         ref_s = seconds([&] { ref = tok.encode_ref(text); }, 1);
    tok.set_threads(1);
    const double one_s = seconds([&] { one = tok.encode(text); }, repeat);
    tok.set_threads(threads);
    const double many_s = seconds([&] { many = tok.encode(text); }, repeat);
    std::printf("%-34s %8s %8s %10s\n", "pass", "s", "MB/s", "speedup");
    std::printf("%-34s %8.3f %8.2f %10.2f\n", "encode_ref (one pass, no cache)", ref_s, mb / ref_s,
                one_s / ref_s);
    std::printf("%-34s %8.3f %8.2f %10.2f\n", "encode, 1 thread", one_s, mb / one_s, 1.0);
    const std::string label = "encode, " + std::to_string(threads) + " threads";
    std::printf("%-34s %8.3f %8.2f %10.2f\n", label.c_str(), many_s, mb / many_s, one_s / many_s);
    std::printf("ids: %zu; encode (1 thread) %s encode_ref; encode (%d threads) %s\n", ref.size(),
                one == ref ? "==" : "!=", threads, many == ref ? "== encode_ref" : "!= encode_ref");
    return one == ref && many == ref ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 2;
}
