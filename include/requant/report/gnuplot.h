#pragma once
#include <string>
#include <utility>
#include <vector>

// Writing report files and drawing PNG plots with gnuplot (Debian's gnuplot-nox): each plot is
// a script written beside its data as NAME.gp and run in that folder. Shared by the run report
// and the sensitivity study's report.

namespace rq::report {

// Writes `text` to `path`; IoError if it cannot.
void write_text(const std::string& path, const std::string& text);

// Writes each (name, script) as dir/name.gp and runs gnuplot on it there. Returns the PNGs
// drawn (dir/name.png). When gnuplot is missing or a script fails, says so on stderr (the
// script and its data stay for a later try) and leaves that plot out.
std::vector<std::string> draw_plots(const std::string&                                      dir,
                                    const std::vector<std::pair<std::string, std::string>>& plots);

// The common head of a script: CSV input, a 900 x 600 PNG named name.png, a two-line title.
std::string gnuplot_head(const std::string& name, const std::string& title,
                         const std::string& subtitle, bool keyed);

}  // namespace rq::report
