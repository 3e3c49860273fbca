// Report files and gnuplot plots (requant/report/gnuplot.h).
#include "requant/report/gnuplot.h"

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "requant/error.h"
#include "requant/io/atomic_file.h"

namespace rq::report {

namespace fs = std::filesystem;

void write_text(const std::string& path, const std::string& text) {
    io::write_file_atomic(path, text);
}

std::vector<std::string> draw_plots(const std::string&                                      dir,
                                    const std::vector<std::pair<std::string, std::string>>& plots) {
    std::vector<std::string> drawn;
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0)
        spdlog::warn(
            "report: gnuplot not found (apt-get install gnuplot-nox): the PNG plots are not "
            "drawn; their scripts are in {}",
            dir);
    std::error_code ec;
    for (const auto& [name, script] : plots) {
        write_text((fs::path(dir) / (name + ".gp")).string(), script);
        const std::string cmd =
            "cd '" + dir + "' && gnuplot '" + name + ".gp' 2>'" + name + ".log'";
        if (std::system(cmd.c_str()) == 0 && fs::exists(fs::path(dir) / (name + ".png"))) {
            drawn.push_back((fs::path(dir) / (name + ".png")).string());
            fs::remove(fs::path(dir) / (name + ".log"), ec);
        } else {
            spdlog::warn("report: gnuplot could not draw {}.png (see {}/{}.log)", name, dir, name);
        }
    }
    return drawn;
}

std::string gnuplot_head(const std::string& name, const std::string& title,
                         const std::string& subtitle, bool keyed) {
    return "set datafile separator ','\nset terminal pngcairo size 900,600 noenhanced\n" +
           std::string(keyed ? "set key autotitle columnhead\n" : "") + "set output '" + name +
           ".png'\nset title \"" + title + "\\n" + subtitle + "\"\n";
}

}  // namespace rq::report
