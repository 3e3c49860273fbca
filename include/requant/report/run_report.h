#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

// The report every `run` writes under OUT/report/: summary.md and PNG plots drawn by gnuplot
// (requant/report/gnuplot.h) from CSV files written beside them, all from the run's
// results.json object (plain data in, files out):
//   errors.png      per layer and linear, the base method's own objective (what Alg. 1 scores:
//                   sum dW^2 for RTN, tr(dW X^T X dW^T) for GPTQ, ...) before the sparse parts
//                   (dense alone) and after them, at quantize time: see linears.csv;
//   proxy.png       the output proxy |(W - W_hat) X|^2 / |W X|^2 before and after, where the
//                   calibration inputs were kept (GPTQ: X^T X; AWQ: its sampled rows);
//   sparse.png      outliers and significant weights per layer;
//   detach.png      dF and sum PQI per detach round (runs with PQI rounds);
//   perplexity.png  perplexity of the full-precision and the quantized model per eval set.

namespace rq::report {

// Writes the CSV files, summary.md and the scripts into `dir` (created) and draws the PNGs;
// returns the PNGs drawn. `results` needs "linears" (per layer and linear, as write_results
// puts it), "perplexity", "perplexity_fp" and "requant".
std::vector<std::string> write_run_report(const nlohmann::json& results, const std::string& dir);

}  // namespace rq::report
