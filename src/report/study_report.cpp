// The sensitivity study's CSV/Markdown tables and gnuplot plots (requant/report/study_report.h).
#include "requant/report/study_report.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "requant/error.h"
#include "requant/model/weights.h"
#include "requant/report/gnuplot.h"

namespace rq::report {
namespace {

namespace fs = std::filesystem;

struct Table {
    std::string                           file;     // CSV name, e.g. "table1_layers.csv"
    std::string                           caption;  // Markdown heading
    std::vector<std::string>              header;
    std::vector<std::vector<std::string>> rows;
};

std::string sci(double v, int digits = 9) {
    char b[48];
    std::snprintf(b, sizeof b, "%.*e", digits, v);
    return b;
}
std::string short_sci(const std::string& s) {  // 3 significant digits for Markdown, as the paper
    if (s.find('e') == std::string::npos) return s;  // integers and names stay as they are
    char*        end = nullptr;
    const double v   = std::strtod(s.c_str(), &end);
    if (end == s.c_str() || *end != '\0') return s;
    return sci(v, 2);
}

void write_file(const fs::path& p, const std::string& text) {
    write_text(p.string(), text);
}

std::string csv(const Table& t) {
    std::ostringstream os;
    for (std::size_t i = 0; i < t.header.size(); ++i) os << (i ? "," : "") << t.header[i];
    os << "\n";
    for (const auto& r : t.rows) {
        for (std::size_t i = 0; i < r.size(); ++i) os << (i ? "," : "") << r[i];
        os << "\n";
    }
    return os.str();
}

std::string markdown(const Table& t) {
    std::ostringstream os;
    os << "## " << t.caption << "\n\n|";
    for (const auto& h : t.header) os << " " << h << " |";
    os << "\n|";
    for (std::size_t i = 0; i < t.header.size(); ++i) os << "---|";
    os << "\n";
    for (const auto& r : t.rows) {
        os << "|";
        for (std::size_t i = 0; i < r.size(); ++i)
            os << " " << (i ? short_sci(r[i]) : r[i]) << " |";
        os << "\n";
    }
    os << "\n(" << t.file << ")\n\n";
    return os.str();
}

std::vector<Table> tables(const StudyTables& s) {
    std::vector<Table> out;
    Table              t1{
        "table1_layers.csv",
        "Table 1: first-order, second-order term and actual dF, one decoder layer quantized at "
                     "a time (PQI: that layer's share of the whole-model integral)",
        {"layer", "first_order", "second_order", "actual_delta_f", "pqi"},
        {}};
    for (std::size_t l = 0; l < s.layer_first.size(); ++l)
        t1.rows.push_back({std::to_string(l), sci(s.layer_first[l]), sci(s.layer_second[l]),
                           sci(s.layer_actual[l]), sci(s.layer_pqi[l])});
    t1.rows.push_back(
        {"All", sci(s.all_first), sci(s.all_second), sci(s.all_actual), sci(s.all_pqi)});
    t1.rows.push_back({"All (cross-layer Hessian blocks too)", sci(s.all_first), sci(s.second_full),
                       sci(s.all_actual), sci(s.all_pqi)});
    out.push_back(t1);

    Table t2{"table2_lambda.csv",
             "Table 2: actual dF at w + lambda (w~ - w) against the Taylor terms at w "
             "(second order: the paper's sum of per-layer blocks, and with the cross-layer blocks)",
             {"lambda", "first_order", "second_order", "second_order_full", "actual_delta_f"},
             {}};
    for (std::size_t i = 0; i < s.lambdas.size(); ++i) {
        const double l = s.lambdas[i];
        t2.rows.push_back({sci(l, 3), sci(l * s.all_first), sci(l * l * s.all_second),
                           sci(l * l * s.second_full), sci(s.lambda_actual[i])});
    }
    out.push_back(t2);

    Table t3{"table3_convergence.csv",
             "Table 3: dF predicted by PQI for N intervals (actual dF " + sci(s.delta_f, 4) + ")",
             {"rule", "intervals", "predicted_delta_f", "abs_error", "rel_error"},
             {}};
    for (const auto& c : s.convergence)
        t3.rows.push_back(
            {c.rule, std::to_string(c.n), sci(c.predicted), sci(std::abs(c.predicted - s.delta_f)),
             sci(std::abs(c.predicted - s.delta_f) / std::max(std::abs(s.delta_f), 1e-300))});
    out.push_back(t3);

    Table t4{"table4_sublayer.csv",
             "Table 4: mean PQI per weight by layer and sublayer (signed; mean |PQI| in the CSV)",
             {"layer"},
             {}};
    for (model::Linear l : model::kLinears) t4.header.push_back(model::linear_name(l));
    for (model::Linear l : model::kLinears)
        t4.header.push_back(std::string(model::linear_name(l)) + "_abs");
    for (int64_t l = 0; l < s.sublayer_mean.size(0); ++l) {
        std::vector<std::string> r{std::to_string(l)};
        for (int64_t i = 0; i < int64_t(model::kNumLinears); ++i)
            r.push_back(sci(s.sublayer_mean[l][i].item<double>()));
        for (int64_t i = 0; i < int64_t(model::kNumLinears); ++i)
            r.push_back(sci(s.sublayer_mean_abs[l][i].item<double>()));
        t4.rows.push_back(r);
    }
    out.push_back(t4);

    Table t5{"table5_share.csv",
             "Table 5: share of the total PQI held by the top weights (signed: ranked by PQI, "
             "share of sum PQI; abs: ranked by |PQI|, share of sum |PQI|)",
             {"weights_fraction", "pqi_share_signed", "pqi_share_abs"},
             {}};
    for (const auto& sh : s.share_table)
        t5.rows.push_back({sci(sh.fraction, 4), sci(sh.share, 6), sci(sh.abs_share, 6)});
    out.push_back(t5);
    Table curve{"share_curve.csv", "", t5.header, {}};
    for (const auto& sh : s.share_curve)
        curve.rows.push_back({sci(sh.fraction, 6), sci(sh.share, 6), sci(sh.abs_share, 6)});
    out.push_back(curve);
    return out;
}

// gnuplot scripts, one per plot, reading the CSV files beside them.
std::vector<std::pair<std::string, std::string>> plots(const StudyTables& s) {
    // Every plot: CSV input, a 900x600 PNG named after it, the run on the title's first line.
    auto start = [&s](std::ostringstream& os, const char* name, const char* what, bool keyed) {
        os << gnuplot_head(name, s.title, what, keyed);
    };
    std::vector<std::pair<std::string, std::string>> p;
    std::ostringstream                               conv;
    start(conv, "pqi_vs_n", "dF predicted by PQI vs intervals N", true);
    conv << "set logscale x 2\nset xlabel 'intervals N'\nset ylabel 'predicted dF'\n"
            "set key top right\n"
         << "actual = " << sci(s.delta_f, 12) << "\nplot ";
    const char* rules[] = {"left", "right", "midpoint", "trapezoid"};
    for (int i = 0; i < 4; ++i)
        conv << "'table3_convergence.csv' using (strcol(1) eq '" << rules[i]
             << "' ? $2 : NaN):3 with linespoints title '" << rules[i] << "', ";
    conv << "actual with lines dashtype 2 title 'actual dF'\n";
    p.emplace_back("pqi_vs_n", conv.str());

    std::ostringstream layers;
    start(layers, "layers", "per-layer estimates vs actual dF (absolute values)", true);
    layers << "set logscale y\nset format y '%.0e'\nset xlabel 'quantized layer'\n"
              "set ylabel '|value|'\nset xtics 1\nset key below\n"
              "plot for [c=2:5] 'table1_layers.csv' every ::0::"
           << s.layer_first.size() - 1
           << " using 1:(abs(column(c))) with linespoints title columnhead(c)\n";
    p.emplace_back("layers", layers.str());

    std::ostringstream share;
    start(share, "share", "cumulative share of the total PQI vs share of weights", true);
    share << "set logscale x\nset format x '%.0e'\nset xlabel 'fraction of weights (top by PQI)'\n"
             "set ylabel 'share of sum of PQI'\nset grid\nset key bottom right\n"
             "plot 'share_curve.csv' using 1:2 with lines linewidth 2 title 'by signed PQI', "
             "'' using 1:3 with lines linewidth 2 title 'by |PQI| (share of sum |PQI|)'\n";
    p.emplace_back("share", share.str());

    std::ostringstream heat;
    start(heat, "heatmap", "mean PQI per weight by layer and sublayer", false);
    heat << "set xlabel 'sublayer'\nset ylabel 'layer'\nset xtics ("
         << "'q' 0, 'k' 1, 'v' 2, 'o' 3, 'gate' 4, 'up' 5, 'down' 6)\nset ytics 1\n"
            "set palette rgb 33,13,10\nset view map\nunset key\nset xrange [-0.5:6.5]\n"
         << "set yrange [-0.5:" << s.sublayer_mean.size(0) - 0.5
         << "]\n"
            "plot 'heatmap.dat' using 1:2:3 with image\n";
    p.emplace_back("heatmap", heat.str());
    return p;
}

}  // namespace

std::vector<std::string> write_study_report(const StudyTables& s, const std::string& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw IoError(dir + ": cannot create the report folder: " + ec.message());
    std::ostringstream md;
    md << "# Sensitivity study: " << s.title << "\n\n"
       << "dF = F(w~) - F(w) on the calibration tokens; F the mean next-token cross-entropy.\n\n"
       << "![](pqi_vs_n.png)\n![](layers.png)\n![](share.png)\n![](heatmap.png)\n\n";
    for (const auto& t : tables(s)) {
        write_file(fs::path(dir) / t.file, csv(t));
        if (!t.caption.empty()) md << markdown(t);
    }
    write_file(fs::path(dir) / "report.md", md.str());
    std::ostringstream heat;  // sublayer, layer, mean PQI; one block per layer (gnuplot image)
    for (int64_t l = 0; l < s.sublayer_mean.size(0); ++l) {
        for (int64_t i = 0; i < int64_t(model::kNumLinears); ++i)
            heat << i << "," << l << "," << sci(s.sublayer_mean[l][i].item<double>()) << "\n";
        heat << "\n";
    }
    write_file(fs::path(dir) / "heatmap.dat", heat.str());

    return draw_plots(dir, plots(s));
}

}  // namespace rq::report
