// The run report: summary.md, CSV files and gnuplot plots (requant/report/run_report.h).
#include "requant/report/run_report.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include "requant/error.h"
#include "requant/report/gnuplot.h"

namespace rq::report {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string num(const json& v, int digits = 6) {  // empty for null (gnuplot: missing)
    if (!v.is_number()) return "";
    char b[48];
    std::snprintf(b, sizeof b, "%.*g", digits, v.get<double>());
    return b;
}

bool any_number(const json& linears, const char* key) {
    for (const auto& l : linears)
        if (l.contains("errors") && l["errors"][key].is_number()) return true;
    return false;
}

struct LayerTotals {
    double outliers = 0, significant = 0, weights = 0;
};

std::map<int64_t, LayerTotals> per_layer(const json& linears) {
    std::map<int64_t, LayerTotals> out;
    for (const auto& l : linears) {
        auto& t = out[l["layer"].get<int64_t>()];
        t.outliers += l["outliers"].get<double>();
        t.significant += l["significant"].get<double>();
        t.weights += l["shape"][0].get<double>() * l["shape"][1].get<double>();
    }
    return out;
}

std::string linears_csv(const json& linears) {
    std::ostringstream os;
    os << "index,layer,linear,objective_dense,objective,proxy_dense,proxy,weight_dense,weight,"
          "outliers,significant,bits_per_weight,dense_bits,sparse_bits,objective_base\n";
    int64_t k = 0;
    for (const auto& l : linears) {
        const json e = l.value("errors", json::object());
        os << k++ << "," << l["layer"] << "," << l["name"].get<std::string>() << ","
           << num(e.value("objective_dense", json())) << "," << num(e.value("objective", json()))
           << "," << num(e.value("proxy_dense", json())) << "," << num(e.value("proxy", json()))
           << "," << num(e.value("weight_dense", json())) << "," << num(e.value("weight", json()))
           << "," << num(l["outliers"], 12) << "," << num(l["significant"], 12) << ","
           << num(l["bits_per_weight"]) << "," << num(l["dense_bits"], 12) << ","
           << num(l["sparse_bits"], 12) << "," << num(e.value("objective_base", json())) << "\n";
    }
    return os.str();
}

std::string layers_csv(const std::map<int64_t, LayerTotals>& layers) {
    std::ostringstream os;
    os << "layer,outliers,significant\n";
    for (const auto& [l, t] : layers) os << l << "," << t.outliers << "," << t.significant << "\n";
    return os.str();
}

std::string detach_csv(const json& rounds) {
    std::ostringstream os;
    os << "round,dF,sum PQI\n";
    for (const auto& r : rounds)
        os << r["round"] << "," << num(r["delta_f"], 9) << "," << num(r["pqi_sum"], 9) << "\n";
    return os.str();
}

std::string perplexity_csv(const json& r) {
    std::ostringstream os;
    os << "set,full precision,quantized\n";
    for (const auto& [name, v] : r["perplexity"].items())
        os << name << "," << num(r["perplexity_fp"][name], 9) << "," << num(v, 9) << "\n";
    return os.str();
}

std::string title_of(const json& r) {
    char b[256];
    std::snprintf(b, sizeof b, "%s, %s %d-bit g%lld, %.3f bits/weight",
                  fs::path(r["model"].get<std::string>()).filename().c_str(),
                  r["method"].get<std::string>().c_str(), r["bits"].get<int>(),
                  (long long)r["group_size"].get<int64_t>(), r["bits_per_weight"].get<double>());
    return b;
}

// x: the linears in model order, a tic per layer; columns of linears.csv: (column, title).
std::string error_plot(const std::string& name, const std::string& title, const char* what,
                       const std::vector<std::pair<int, std::string>>& series,
                       std::size_t                                     n_layers) {
    std::ostringstream os;
    os << gnuplot_head(name, title, what, true)
       << "set logscale y\nset format y '%.0e'\nset xlabel 'layer (its linears q k v o gate "
          "up down at layer + 0/7 ... 6/7)'\nset ylabel 'error'\nset key below\nset grid ytics\n"
       << "set xtics 1\nset xrange [-0.5:" << n_layers - 0.5 << "]\nplot ";
    const int points[] = {9, 7, 6};
    for (std::size_t k = 0; k < series.size(); ++k)
        os << (k ? ", " : "") << "'linears.csv' using ($1/7.0):" << series[k].first
           << " with points pointtype " << points[k % 3] << " title '" << series[k].second << "'";
    os << "\n";
    return os.str();
}

// Columns 2 and 3 of `csv` as clustered bars, column 1 the labels.
std::string histogram_plot(const std::string& name, const std::string& title,
                           const std::string& subtitle, const std::string& csv,
                           const std::string& axes) {
    return gnuplot_head(name, title, subtitle, true) +
           "set style data histograms\nset style histogram clustered\nset style fill solid "
           "0.6\n" +
           axes + "set key top left\nplot '" + csv + "' using 2:xtic(1), '' using 3\n";
}

std::vector<std::pair<std::string, std::string>> plots(const json& r, std::size_t n_layers) {
    const std::string                                t = title_of(r);
    std::vector<std::pair<std::string, std::string>> p;
    std::vector<std::pair<int, std::string>>         obj;
    if (any_number(r["linears"], "objective_base"))
        obj.emplace_back(15, "base method alone (Alg. 1, no sparse part)");
    obj.emplace_back(4, "dense part alone (sparse positions empty)");
    obj.emplace_back(5, "dense + sparse parts");
    if (any_number(r["linears"], "objective"))  // layer files of older versions hold none
        p.emplace_back("errors", error_plot("errors", t,
                                            "the base method's own objective per linear (what "
                                            "Alg. 1 scores), at quantize time",
                                            obj, n_layers));
    if (any_number(r["linears"], "proxy"))
        p.emplace_back(
            "proxy", error_plot("proxy", t,
                                "output proxy |(W - W_hat) X|^2 / |W X|^2 on the "
                                "calibration inputs, at quantize time",
                                {{6, "dense part alone"}, {7, "dense + sparse parts"}}, n_layers));
    p.emplace_back("sparse", histogram_plot("sparse", t, "sparse weights per layer", "layers.csv",
                                            "set xlabel 'layer'\nset ylabel 'weights'\n"));
    if (r["requant"].contains("detach") && !r["requant"]["detach"]["pqi"].empty()) {
        std::ostringstream d;
        d << gnuplot_head("detach", t, "PQI detach rounds: actual dF against sum of PQI", true)
          << "set xlabel 'round'\nset ylabel 'F(w~) - F(w), calibration loss'\nset xtics 1\n"
             "set grid\nset key top right\nplot 'detach.csv' using 1:2 with linespoints, '' "
             "using 1:3 with linespoints\n";
        p.emplace_back("detach", d.str());
    }
    p.emplace_back("perplexity",
                   histogram_plot("perplexity", t, "perplexity before and after quantization",
                                  "perplexity.csv", "set ylabel 'perplexity'\nset yrange [0:*]\n"));
    return p;
}

std::string summary_md(const json& r, const std::map<int64_t, LayerTotals>& layers,
                       const std::vector<std::string>& pngs) {
    std::ostringstream md;
    char               b[512];
    md << "# Run report: " << title_of(r) << "\n\n";
    std::snprintf(b, sizeof b,
                  "%.0f linear weights; %.0f outliers and %.0f significant weights kept sparse; "
                  "%.4f GiB (fp16 %.4f GiB).\n\n",
                  r["linear_weights"].get<double>(), r["requant"]["outliers"].get<double>(),
                  r["requant"]["significant"].get<double>(), r["memory_gib"].get<double>(),
                  r["memory_gib_fp16"].get<double>());
    md << b << "| eval set | perplexity, full precision | perplexity, quantized |\n|---|---|---|\n";
    for (const auto& [name, v] : r["perplexity"].items())
        md << "| " << name << " | " << num(r["perplexity_fp"][name], 8) << " | " << num(v, 8)
           << " |\n";
    if (r["requant"].contains("detach") && !r["requant"]["detach"]["pqi"].empty()) {
        md << "\n| detach round | dF | sum PQI |\n|---|---|---|\n";
        for (const auto& x : r["requant"]["detach"]["pqi"])
            md << "| " << x["round"] << " | " << num(x["delta_f"]) << " | " << num(x["pqi_sum"])
               << " |\n";
    }
    md << "\n| layer | outliers | significant | sparse share |\n|---|---|---|---|\n";
    for (const auto& [l, t] : layers) {
        std::snprintf(b, sizeof b, "| %lld | %.0f | %.0f | %.4f%% |\n", (long long)l, t.outliers,
                      t.significant, 100 * (t.outliers + t.significant) / t.weights);
        md << b;
    }
    md << "\nPer linear (objective and proxy before/after the sparse parts, bits, counts): "
          "linears.csv; the same numbers are in results.json `linears` and in `requant-dist "
          "inspect --json`.\n\n";
    for (const auto& png : pngs) md << "![](" << fs::path(png).filename().string() << ")\n";
    return md.str();
}

}  // namespace

std::vector<std::string> write_run_report(const json& r, const std::string& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw IoError(dir + ": cannot create the report folder: " + ec.message());
    const json& linears = r.at("linears");
    const auto  layers  = per_layer(linears);
    const auto  path    = [&dir](const char* f) { return (fs::path(dir) / f).string(); };
    write_text(path("linears.csv"), linears_csv(linears));
    write_text(path("layers.csv"), layers_csv(layers));
    write_text(path("perplexity.csv"), perplexity_csv(r));
    if (r["requant"].contains("detach"))
        write_text(path("detach.csv"), detach_csv(r["requant"]["detach"]["pqi"]));
    const auto pngs = draw_plots(dir, plots(r, layers.size()));
    write_text(path("summary.md"), summary_md(r, layers, pngs));
    return pngs;
}

}  // namespace rq::report
