#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

// The sensitivity study's report under OUT/report/: the analogues of the paper's Tables 1-5
// (PAPER.md §3) as CSV files and one report.md, and PNG plots drawn by gnuplot (Debian's
// gnuplot-nox) from those CSV files with the .gp scripts written beside them. Plain data in,
// files out; nothing here computes a sensitivity. L n_layer.

namespace rq::report {

struct StudyTables {
    std::string title;  // "llama-7m-en, rtn 4-bit g128, 32 x 256 calibration tokens"
    // Table 1: one decoder layer quantized at a time; "All": every layer.
    std::vector<double> layer_first, layer_second, layer_actual, layer_pqi;  // [L]
    double              all_first = 0, all_second = 0, all_actual = 0, all_pqi = 0;
    double              second_full = 0;  // 1/2 dw^T H dw with the cross-layer blocks
    // Table 2: the path w + lambda dw.
    std::vector<double> lambdas, lambda_actual;
    // Table 3: PQI's prediction of the whole-model dF per rule and number of intervals.
    struct Convergence {
        std::string rule;
        int         n         = 0;
        double      predicted = 0;
    };
    std::vector<Convergence> convergence;
    double                   delta_f = 0;  // the actual dF on the same (fp32) passes
    // Table 4: mean PQI per weight by layer and sublayer, signed and absolute (double [L, 7]).
    at::Tensor sublayer_mean, sublayer_mean_abs;
    // Table 5 and its curve: the top `fraction` of weights ranked by signed PQI hold `share` of
    // the sum of PQI; ranked by |PQI|, `abs_share` of the sum of |PQI|.
    struct Share {
        double fraction = 0, share = 0, abs_share = 0;
    };
    std::vector<Share> share_table, share_curve;
};

// Writes the CSV files, report.md and the gnuplot scripts into `dir` (created), then draws the
// PNGs. Returns the PNG files drawn; when gnuplot is missing or fails it says so on stderr and
// returns none (the CSV files and scripts are written either way). Throws IoError when a file
// cannot be written.
std::vector<std::string> write_study_report(const StudyTables& s, const std::string& dir);

}  // namespace rq::report
