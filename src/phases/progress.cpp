// Terminal and log progress reporting (requant/phases/progress.h).
#include "requant/phases/progress.h"

#include <unistd.h>

#include <cstdio>
#include <memory>

namespace rq::phases {

std::string format_duration(double s) {
    char buf[64];
    if (s < 60)
        std::snprintf(buf, sizeof buf, "%.0f s", s);
    else if (s < 3600)
        std::snprintf(buf, sizeof buf, "%d min %02d s", int(s) / 60, int(s) % 60);
    else
        std::snprintf(buf, sizeof buf, "%d h %02d min", int(s) / 3600, int(s) % 3600 / 60);
    return buf;
}

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      tty_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

double Progress::elapsed_s() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(int64_t done) {
    done_                     = done;
    const auto        now     = std::chrono::steady_clock::now();
    const double      elapsed = elapsed_s();
    const int64_t     worked  = done - skipped_;  // steps of this run
    const double      eta     = worked > 0 ? elapsed * double(total_ - done) / double(worked) : 0.0;
    const std::string eta_s   = worked > 0 ? format_duration(eta) : done == total_ ? "0 s" : "?";
    if (tty_) {
        constexpr int kWidth = 30;
        const int     fill   = total_ > 0 ? int(kWidth * done / total_) : kWidth;
        std::string   bar(static_cast<std::size_t>(fill), '#');
        bar.append(static_cast<std::size_t>(kWidth - fill), '.');
        std::fprintf(stderr, "\r%s [%s] %lld/%lld %s  %s elapsed  ETA %s   ", label_.c_str(),
                     bar.c_str(), (long long)done, (long long)total_, unit_.c_str(),
                     format_duration(elapsed).c_str(), eta_s.c_str());
        std::fflush(stderr);
        return;
    }
    const int64_t decile = total_ > 0 ? done * 10 / total_ : 10;
    if (decile == last_decile_ && now - last_print_ < std::chrono::seconds(10)) return;
    last_decile_ = decile;
    last_print_  = now;
    std::fprintf(stderr, "%s: %lld/%lld %s, %s elapsed, ETA %s\n", label_.c_str(), (long long)done,
                 (long long)total_, unit_.c_str(), format_duration(elapsed).c_str(), eta_s.c_str());
}

void Progress::finish() {
    if (finished_) return;
    finished_ = true;
    if (tty_) std::fprintf(stderr, "\n");
    std::fprintf(stderr, "%s: done, %lld %s in %s\n", label_.c_str(), (long long)done_,
                 unit_.c_str(), format_duration(elapsed_s()).c_str());
}

std::function<void(int, int)> step_progress(bool show, std::string label, std::string unit) {
    auto bar = std::make_shared<std::unique_ptr<Progress>>();
    return [=](int done, int total) {
        if (!show) return;
        if (!*bar) *bar = std::make_unique<Progress>(label, total, unit);
        (*bar)->update(done);
        if (done == total) (*bar)->finish(), bar->reset();
    };
}

}  // namespace rq::phases
