// Tests of job files (requant/io/job.h): defaults, the method-dependent sequential default,
// every refusal (each naming the file and the key), --set overrides, path resolution against
// the job file's folder, the job_to_toml and Boost.Serialization round trips, and the two
// bundled job files in jobs/ (found from this file's path, so they parse wherever the checkout is).
#include <gtest/gtest.h>

#include <boost/archive/binary_iarchive.hpp>
#include <boost/archive/binary_oarchive.hpp>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "io_fixtures.h"
#include "requant/error.h"
#include "requant/io/hf_config.h"
#include "requant/io/job.h"

namespace {

namespace fs = std::filesystem;
using rq::ConfigError;
using rq::FormatError;
using rq::IoError;
using rq::io::AwqLoss;
using rq::io::Job;
using rq::io::job_to_toml;
using rq::io::kPqiRules;
using rq::io::load_job;
using rq::io::name;
using rq::io::OutlierSelect;
using rq::io::parse_job;
using rq::io::PqiRule;
using rq::io::QtipCode;
using rq::io::QuantMethod;
using rq::io::SelectScope;
using rq::io::SignificantSelect;
using rq::io::TransportKind;
using rq::io_test::expect_error;
using rq::io_test::TempDir;

// The two required keys and nothing else.
const std::string kMinimal = R"([model]
path = "models/m"
[data]
calibration = "calib.txt"
)";

// A job file location that need not exist: relative paths resolve against its folder.
const std::string kDir    = (std::filesystem::temp_directory_path() / "rq-job-test").string();
const std::string kOrigin = kDir + "/job.toml";

Job parse(const std::string& text, const std::vector<std::string>& sets = {}) {
    return parse_job(text, kOrigin, sets);
}

// Expects parse(text, sets) to throw ConfigError containing every needle.
void expect_config_error(const std::string& text, const std::vector<std::string>& needles,
                         const std::vector<std::string>& sets = {}) {
    expect_error<ConfigError>([&] { parse(text, sets); }, needles);
}

fs::path jobs_dir() {
    return fs::path(__FILE__).parent_path().parent_path().parent_path() / "jobs";
}

TEST(Job, Defaults) {
    const Job j = parse(kMinimal);
    EXPECT_EQ(j.model.path, (std::filesystem::path(kDir) / "models" / "m").string());
    EXPECT_EQ(j.data.calibration, kDir + "/calib.txt");
    EXPECT_EQ(j.data.calibration_seqs, 128);
    EXPECT_EQ(j.data.seq_len, 256);
    EXPECT_TRUE(j.data.eval.empty());
    EXPECT_EQ(j.data.eval_max_seqs, 64);
    EXPECT_EQ(j.quant.method, QuantMethod::Rtn);
    EXPECT_EQ(j.quant.bits, 4);
    EXPECT_EQ(j.quant.group_size, 128);
    EXPECT_FALSE(j.quant.sequential);
    EXPECT_DOUBLE_EQ(j.quant.damp, 0.01);
    EXPECT_FALSE(j.quant.act_order);
    EXPECT_EQ(j.quant.block_size, 128);
    EXPECT_EQ(j.quant.awq_grid, 20);
    EXPECT_EQ(j.quant.awq_samples, 512);
    EXPECT_EQ(j.quant.awq_loss, AwqLoss::Block);
    EXPECT_TRUE(j.quant.true_sequential);
    EXPECT_EQ(j.quant.kmeans_iters, 50);
    EXPECT_EQ(j.requant.outlier_ratio, 0.0);
    EXPECT_EQ(j.requant.outlier_select, OutlierSelect::None);
    EXPECT_EQ(j.requant.significant_ratio, 0.0);
    EXPECT_EQ(j.requant.step_ratio, 0.0);
    EXPECT_EQ(j.requant.scope, SelectScope::Global);
    EXPECT_EQ(j.requant.significant_select, SignificantSelect::Pqi);
    EXPECT_TRUE(j.requant.signed_ranking);
    EXPECT_EQ(j.sensitivity.nodes, 32);
    EXPECT_EQ(j.sensitivity.rule, PqiRule::Midpoint);
    EXPECT_EQ(j.requant.outlier_candidates, (std::vector<double>{0, 0.25, 0.5, 1, 1.5, 2, 3, 4}));
    EXPECT_TRUE(j.sensitivity.study);
    EXPECT_EQ(j.sensitivity.lambdas, (std::vector<double>{1e-3, 5e-3, 1e-2, 5e-2, 1e-1, 1.0}));
    EXPECT_EQ(j.sensitivity.hvp_eps, 1e-4);
    EXPECT_EQ(j.run.out,
              (std::filesystem::path(kDir) / "runs" / "job").string());  // runs/<job file stem>
    EXPECT_EQ(j.run.microbatch, 4);
    EXPECT_EQ(j.run.threads, 2);
    EXPECT_EQ(j.run.transport, TransportKind::Mpi);
}

TEST(Job, SequentialDefaultFollowsMethod) {
    EXPECT_FALSE(parse(kMinimal + "[quant]\nmethod = \"rtn\"\n").quant.sequential);
    EXPECT_TRUE(parse(kMinimal + "[quant]\nmethod = \"gptq\"\n").quant.sequential);
    EXPECT_FALSE(parse(kMinimal + "[quant]\nmethod = \"awq\"\n").quant.sequential);
    EXPECT_FALSE(
        parse(kMinimal + "[quant]\nmethod = \"gptq\"\nsequential = false\n").quant.sequential);
    EXPECT_TRUE(
        parse(kMinimal + "[quant]\nmethod = \"awq\"\nsequential = true\n").quant.sequential);
    // The default is resolved after overrides: --set quant.method=gptq turns it on too.
    EXPECT_TRUE(parse(kMinimal, {"quant.method=gptq"}).quant.sequential);
}

TEST(Job, UnknownTablesAndKeys) {
    expect_config_error(kMinimal + "[qaunt]\nbits = 3\n", {kOrigin, "unknown table 'qaunt'"});
    expect_config_error(kMinimal + "[quant]\nbitz = 3\n", {kOrigin, "unknown key 'quant.bitz'"});
    expect_config_error("bits = 3\n" + kMinimal, {kOrigin, "unknown key 'bits'"});
    expect_config_error(kMinimal + "[quant.extra]\nx = 1\n", {"unknown key 'quant.extra'"});
    expect_config_error("model = 3\n[data]\ncalibration = \"c\"\n",
                        {"'model' must be a table, got integer"});
}

TEST(Job, WrongTypes) {
    expect_config_error(kMinimal + "[quant]\nbits = \"4\"\n",
                        {kOrigin, "'quant.bits' must be an integer, got string"});
    expect_config_error(kMinimal + "[quant]\nbits = 4.0\n", {"'quant.bits' must be an integer"});
    expect_config_error(kMinimal + "[quant]\nsequential = 1\n",
                        {"'quant.sequential' must be true or false, got integer"});
    expect_config_error(kMinimal + "[requant]\noutlier_ratio = \"0.1\"\n",
                        {"'requant.outlier_ratio' must be a number, got string"});
    expect_config_error(kMinimal + "[quant]\nmethod = 3\n", {"'quant.method' must be a string"});
}

TEST(Job, WrongTypesInArraysAndPaths) {
    const std::string base = "[model]\npath = \"m\"\n[data]\ncalibration = \"c\"\n";
    expect_config_error(base + "eval = \"a.txt\"\n",
                        {"'data.eval' must be an array of strings, got string"});
    expect_config_error(base + "eval = [\"a.txt\", 3]\n",
                        {"'data.eval' must be an array of strings", "integer"});
    expect_config_error("[model]\npath = 7\n[data]\ncalibration = \"c\"\n",
                        {"'model.path' must be a string, got integer"});
}

TEST(Job, ValuesOutOfRange) {
    expect_config_error(kMinimal + "[quant]\nbits = 9\n",
                        {kOrigin, "'quant.bits' must be in 2..8, got 9"});
    expect_config_error(kMinimal + "[quant]\nbits = 1\n", {"'quant.bits' must be in 2..8, got 1"});
    expect_config_error(kMinimal + "[requant]\noutlier_ratio = 1.5\n",
                        {"'requant.outlier_ratio' must be a fraction in [0, 1), got 1.5"});
    expect_config_error(kMinimal + "[requant]\nstep_ratio = -0.1\n", {"'requant.step_ratio'"});
    expect_config_error(kMinimal + "[requant]\nsignificant_ratio = nan\n",
                        {"'requant.significant_ratio'"});
    expect_config_error(kMinimal + "[quant]\ngroup_size = 1\n", {"'quant.group_size' must be 0"});
    expect_config_error(kMinimal + "[quant]\ngroup_size = -128\n", {"'quant.group_size'"});
    expect_config_error(kMinimal + "calibration_seqs = -1\n",
                        {"'data.calibration_seqs' must be >= 1, got -1"});
    expect_config_error(kMinimal + "[run]\nthreads = 0\n", {"'run.threads' must be >= 1, got 0"});
    expect_config_error(kMinimal + "[run]\nmicrobatch = -2\n", {"'run.microbatch'"});
    expect_config_error(kMinimal + "[sensitivity]\nnodes = 0\n", {"'sensitivity.nodes'"});
    expect_config_error(kMinimal + "[quant]\nbits = 4294967300\n",
                        {"'quant.bits' is out of range"});
    expect_config_error(kMinimal + "eval_max_seqs = -2\n",
                        {"'data.eval_max_seqs' must be -1 (all) or >= 1, got -2"});
    expect_config_error(kMinimal + "[run]\nrank_timeout = 0.5\n",
                        {"'run.rank_timeout' must be seconds >= 1, or 0 (never), got 0.5"});
    expect_config_error(kMinimal + "[run]\nmem_check = 1\n",
                        {"'run.mem_check' must be true or false"});
    EXPECT_EQ(parse(kMinimal).run.rank_timeout, 300);
    EXPECT_TRUE(parse(kMinimal).run.mem_check);
    EXPECT_EQ(parse(kMinimal, {"run.rank_timeout=0"}).run.rank_timeout, 0);
    EXPECT_FALSE(parse(kMinimal, {"run.mem_check=false"}).run.mem_check);
    // Any positive group size is allowed, not only powers of two; -1 keeps every eval window.
    EXPECT_EQ(parse(kMinimal + "[quant]\ngroup_size = 172\n").quant.group_size, 172);
    EXPECT_EQ(parse(kMinimal + "[quant]\ngroup_size = 0\n").quant.group_size, 0);
    EXPECT_EQ(parse(kMinimal, {"data.eval_max_seqs=-1"}).data.eval_max_seqs, -1);
}

TEST(Job, UnknownEnumValuesListTheAllowedOnes) {
    expect_config_error(
        kMinimal + "[quant]\nmethod = \"gptqq\"\n",
        {kOrigin, "'quant.method' is 'gptqq'; allowed: rtn, gptq, awq, squeezellm"});
    expect_config_error(kMinimal + "[requant]\noutlier_select = \"auto\"\n",
                        {"allowed: adaptive, fixed, random, none"});
    expect_config_error(kMinimal + "[requant]\nscope = \"layer\"\n", {"allowed: global, linear"});
    expect_config_error(kMinimal + "[requant]\nsignificant_select = \"x\"\n",
                        {"allowed: pqi, fisher, random"});
    expect_config_error(kMinimal + "[sensitivity]\nrule = \"simpson\"\n",
                        {"allowed: left, right, midpoint, trapezoid"});
    expect_config_error(kMinimal + "[requant]\noutlier_candidates = [0, 2, 1]\n",
                        {"'requant.outlier_candidates' must increase strictly"});
    expect_config_error(kMinimal + "[requant]\nsignificant_ratio = 0.001\nstep_ratio = 0.002\n",
                        {"'requant.step_ratio' must not exceed"});
    expect_config_error(kMinimal + "[sensitivity]\nlambdas = []\n",
                        {"'sensitivity.lambdas' must not be empty"});
    expect_config_error(kMinimal + "[sensitivity]\nlambdas = [0.5, 1.5]\n",
                        {"'sensitivity.lambdas' must lie in (0, 1], got 1.5"});
    expect_config_error(kMinimal + "[sensitivity]\nlambdas = [0.5, \"x\"]\n",
                        {"'sensitivity.lambdas' must be an array of numbers"});
    expect_config_error(kMinimal + "[sensitivity]\nhvp_eps = 0\n",
                        {"'sensitivity.hvp_eps' must lie in (0, 1)"});
    expect_config_error(kMinimal + "[sensitivity]\nstudy = 1\n",
                        {"'sensitivity.study' must be true or false"});
    expect_config_error(kMinimal + "[run]\ntransport = \"gloo\"\n", {"allowed: mpi, nccl"});
}

TEST(Job, MissingRequiredKeys) {
    expect_config_error("[data]\ncalibration = \"c\"\n", {kOrigin, "'model.path' is required"});
    expect_config_error("[model]\npath = \"m\"\n", {kOrigin, "'data.calibration' is required"});
    expect_config_error("[model]\npath = \"\"\n[data]\ncalibration = \"c\"\n",
                        {"'model.path' must not be empty"});
}

TEST(Job, TomlSyntaxIsAFormatError) {
    expect_error<FormatError>([] { parse("[model\npath = \"m\"\n"); },
                              {kOrigin + ":1:", "not valid TOML"});
    expect_error<FormatError>([] { parse(kMinimal + "[data]\n"); }, {kOrigin, "not valid TOML"});
}

TEST(Job, Overrides) {
    const std::string abs_out = kDir + "-out";  // an absolute path stays as it is
    const Job         j =
        parse(kMinimal, {"quant.bits=3", "quant.method=gptq", "data.eval=[\"a.txt\",\"b.txt\"]",
                         "requant.outlier_ratio=0.0045", "requant.outlier_select = adaptive",
                         "quant.act_order=true", "run.out=\"" + abs_out + "\""});
    EXPECT_EQ(j.quant.bits, 3);
    EXPECT_EQ(j.quant.method, QuantMethod::Gptq);  // bare word taken as a string
    EXPECT_EQ(j.data.eval, (std::vector<std::string>{kDir + "/a.txt", kDir + "/b.txt"}));
    EXPECT_DOUBLE_EQ(j.requant.outlier_ratio, 0.0045);
    EXPECT_EQ(j.requant.outlier_select, OutlierSelect::Adaptive);
    EXPECT_TRUE(j.quant.act_order);
    EXPECT_EQ(j.run.out, abs_out);
    // Later overrides win; overrides beat the file; they can add a whole table.
    EXPECT_EQ(parse(kMinimal + "[quant]\nbits = 8\n", {"quant.bits=2", "quant.bits=5"}).quant.bits,
              5);
    EXPECT_EQ(parse(kMinimal, {"sensitivity.rule=trapezoid"}).sensitivity.rule, PqiRule::Trapezoid);
    // Overrides are validated like the file.
    expect_config_error(kMinimal, {"'quant.bits' must be in 2..8, got 12"}, {"quant.bits=12"});
    expect_config_error(kMinimal, {"'quant.bits' must be an integer, got string"},
                        {"quant.bits=three"});
}

TEST(Job, BadOverrides) {
    expect_config_error(kMinimal, {kOrigin, "unknown key 'quant.bitz'", "--set quant.bitz=3"},
                        {"quant.bitz=3"});
    expect_config_error(kMinimal, {"unknown key 'qaunt.bits'"}, {"qaunt.bits=3"});
    expect_config_error(kMinimal, {"--set quant.bits", "expected section.key=value"},
                        {"quant.bits"});
    expect_config_error(kMinimal, {"expected section.key=value"}, {"bits=3"});
    expect_config_error(kMinimal, {"expected section.key=value"}, {"quant.bits.x=3"});
}

// A --set value that is not TOML is taken as a string; it must still be UTF-8, as every TOML
// string is, or the job would not print and parse back the same (found by fuzz_job).
TEST(Job, OverridesMustBeUtf8) {
    const std::pair<std::string, int> cases[] = {
        {"\xff", 11}, {"\xc3", 11}, {"\xed\xa0\x80", 11} /* a surrogate */, {"ab\xc0\xaf", 13}};
    for (const auto& [bad, at] : cases)
        expect_config_error(kMinimal,
                            {"--set argument is not valid UTF-8 at byte " + std::to_string(at)},
                            {"model.path=" + bad});
    const Job j = parse(kMinimal, {"model.path=caf\xc3\xa9"});  // é: valid
    EXPECT_EQ(fs::path(j.model.path).filename(), "caf\xc3\xa9");
    EXPECT_EQ(parse_job(rq::io::job_to_toml(j), kOrigin), j);
}

TEST(Job, RelativePathsResolveAgainstTheJobFolder) {
    const fs::path    root = fs::path(kDir) / "a";  // stands for any absolute folder
    const std::string abs1 = (root / "abs" / "calib.txt").string();
    const std::string abs3 = (root / "abs" / "e3.txt").string();
    const std::string text = "[model]\npath = \"../models/m\"\n[data]\ncalibration = \"" + abs1 +
                             "\"\neval = [\"e1.txt\", \"./sub/../e2.txt\", \"" + abs3 +
                             "\"]\n[run]\nout = \"../runs/x\"\n";
    const Job j = parse_job(text, (root / "b" / "jobs" / "j.toml").string());
    EXPECT_EQ(j.model.path, (root / "b" / "models" / "m").string());
    EXPECT_EQ(j.data.calibration, abs1);
    EXPECT_EQ(j.data.eval,
              (std::vector<std::string>{(root / "b" / "jobs" / "e1.txt").string(),
                                        (root / "b" / "jobs" / "e2.txt").string(), abs3}));
    EXPECT_EQ(j.run.out, (root / "b" / "runs" / "x").string());
    // A relative origin is taken from the working directory.
    const Job r = parse_job(kMinimal, "rel/sweep.toml");
    EXPECT_EQ(r.model.path, (fs::current_path() / "rel/models/m").lexically_normal().string());
    EXPECT_EQ(r.run.out, (fs::current_path() / "rel/runs/sweep").lexically_normal().string());
}

Job everything_set() {
    Job j =
        parse(kMinimal,
              {"quant.method=squeezellm", "quant.bits=3", "quant.group_size=0", "quant.damp=0.1",
               "quant.awq_samples=2048", "quant.act_order=true", "quant.sequential=true",
               "requant.outlier_ratio=0.0045", "requant.significant_ratio=5e-4",
               "requant.step_ratio=0.00025", "requant.scope=linear", "requant.signed_ranking=false",
               "data.eval=[\"it's.txt\", 'b \"q\".txt']", "run.transport=nccl",
               "sensitivity.nodes=7", "data.eval_max_seqs=-1", "sensitivity.study=false",
               "sensitivity.lambdas=[0.25, 1]", "sensitivity.hvp_eps=1e-4"});
    j.requant.outlier_ratio = 0.1 + 0.2;  // not short in decimal: must still round-trip exactly
    return j;
}

TEST(Job, AwqSamplesIsAJobKey) {
    // It shapes AWQ's result, so it is a key (and in job_to_toml, which the fingerprint covers).
    EXPECT_EQ(parse(kMinimal, {"quant.awq_samples=64"}).quant.awq_samples, 64);
    EXPECT_NE(job_to_toml(parse(kMinimal, {"quant.awq_samples=64"})), job_to_toml(parse(kMinimal)));
    expect_config_error(kMinimal, {"'quant.awq_samples' must be >= 1"}, {"quant.awq_samples=0"});
}

TEST(Job, TrueSequentialKey) {
    EXPECT_FALSE(parse(kMinimal, {"quant.true_sequential=false"}).quant.true_sequential);
    EXPECT_NE(job_to_toml(parse(kMinimal, {"quant.true_sequential=false"})),
              job_to_toml(parse(kMinimal)));
}

TEST(Job, HoldoutKey) {
    const std::vector<std::string> pqi = {"requant.significant_ratio=0.0005",
                                          "requant.significant_select=pqi"};
    std::vector<std::string>       on  = pqi;
    on.push_back("requant.holdout=0.25");
    EXPECT_EQ(parse(kMinimal, on).requant.holdout, 0.25);
    EXPECT_EQ(parse(kMinimal).requant.holdout, 0.0);
    EXPECT_NE(job_to_toml(parse(kMinimal, on)), job_to_toml(parse(kMinimal, pqi)));
    expect_config_error(kMinimal, {"requant.holdout", "needs Alg. 2"}, {"requant.holdout=0.25"});
    on.back() = "requant.holdout=1";
    expect_config_error(kMinimal, {"requant.holdout", "[0, 1)"}, on);
}

TEST(Job, AwqLossKey) {
    EXPECT_EQ(parse(kMinimal, {"quant.awq_loss=linear"}).quant.awq_loss, AwqLoss::Linear);
    EXPECT_EQ(parse(kMinimal, {"quant.awq_loss='block'"}).quant.awq_loss, AwqLoss::Block);
    EXPECT_NE(job_to_toml(parse(kMinimal, {"quant.awq_loss=linear"})),
              job_to_toml(parse(kMinimal)));
    expect_config_error(kMinimal, {"quant.awq_loss", "allowed: block, linear"},
                        {"quant.awq_loss=sum"});
}

TEST(Job, QtipKeys) {
    const Job j = parse(kMinimal, {"quant.method=qtip", "quant.bits=2"});
    EXPECT_EQ(j.quant.method, QuantMethod::Qtip);
    EXPECT_EQ(j.quant.group_size, 0);  // its default: no groups
    EXPECT_FALSE(j.quant.sequential);
    EXPECT_EQ(j.quant.qtip_code, QtipCode::Hyb);
    EXPECT_EQ(j.quant.qtip_seed, 0);
    for (QtipCode c : {QtipCode::Hyb, QtipCode::OneMad, QtipCode::ThreeInst})
        EXPECT_EQ(parse(kMinimal, {"quant.method=qtip", std::string("quant.qtip_code=") + name(c)})
                      .quant.qtip_code,
                  c);
    EXPECT_EQ(parse(kMinimal, {"quant.method=qtip", "quant.qtip_seed=7"}).quant.qtip_seed, 7);
    EXPECT_NE(job_to_toml(parse(kMinimal, {"quant.method=qtip", "quant.qtip_seed=7"})),
              job_to_toml(j));
    expect_config_error(kMinimal, {"'quant.bits' must be in 2..4"},
                        {"quant.method=qtip", "quant.bits=5"});
    expect_config_error(kMinimal, {"'quant.group_size' does not apply to qtip"},
                        {"quant.method=qtip", "quant.group_size=128"});
    expect_config_error(kMinimal, {"'quant.sequential' must be false for qtip"},
                        {"quant.method=qtip", "quant.sequential=true"});
    expect_config_error(kMinimal, {"'quant.qtip_code'", "hyb, 1mad, 3inst"},
                        {"quant.method=qtip", "quant.qtip_code=2mad"});
    expect_config_error(kMinimal, {"'quant.qtip_seed' must be >= 0"},
                        {"quant.method=qtip", "quant.qtip_seed=-1"});
}

TEST(Job, EveryEnumValueRoundTripsByName) {
    for (QuantMethod m : {QuantMethod::Rtn, QuantMethod::Gptq, QuantMethod::Awq,
                          QuantMethod::SqueezeLlm, QuantMethod::Qtip})
        EXPECT_EQ(parse(kMinimal, {std::string("quant.method=") + name(m)}).quant.method, m);
    for (PqiRule r : kPqiRules)
        EXPECT_EQ(parse(kMinimal, {std::string("sensitivity.rule=") + name(r)}).sensitivity.rule,
                  r);
    for (SelectScope sc : {SelectScope::Global, SelectScope::Linear})
        EXPECT_EQ(parse(kMinimal, {std::string("requant.scope=") + name(sc)}).requant.scope, sc);
}

TEST(Job, RoundTripThroughToml) {
    for (const Job& j : {parse(kMinimal), everything_set()}) {
        const std::string text = job_to_toml(j);
        const Job back = parse_job(text, (fs::path(kDir) / "elsewhere" / "other.toml").string());
        EXPECT_TRUE(back == j) << text << "---\n" << job_to_toml(back);
        EXPECT_EQ(job_to_toml(back), text);
    }
    EXPECT_TRUE(parse(kMinimal) != everything_set());
    const std::string text = job_to_toml(parse(kMinimal));
    EXPECT_NE(text.find("[quant]\nmethod             = 'rtn'\n"), std::string::npos) << text;
    EXPECT_NE(text.find("damp               = 0.01\n"), std::string::npos) << text;
}

TEST(Job, BoostSerializationRoundTrip) {
    const Job          j = everything_set();
    std::ostringstream out;
    {
        boost::archive::binary_oarchive ar(out);
        ar << j;
    }
    Job                back;
    std::istringstream in(out.str());
    {
        boost::archive::binary_iarchive ar(in);
        ar >> back;
    }
    EXPECT_TRUE(back == j) << job_to_toml(back);
}

TEST(Job, LoadJobReadsFilesAndRefusesMissingOnes) {
    TempDir dir;
    rq::io_test::write_file(dir.file("sweep.toml"), kMinimal);
    const Job j = load_job(dir.file("sweep.toml"), {"quant.bits=2"});
    EXPECT_EQ(j.model.path, (fs::path(dir.path()) / "models" / "m").string());
    EXPECT_EQ(j.run.out, (fs::path(dir.path()) / "runs" / "sweep").string());
    EXPECT_EQ(j.quant.bits, 2);
    expect_error<IoError>([&] { load_job(dir.file("missing.toml")); },
                          {"missing.toml", "cannot open"});
    expect_error<IoError>([&] { load_job(dir.path()); }, {dir.path(), "folder"});
    rq::io_test::write_file(dir.file("typo.toml"), kMinimal + "[quant]\nbitz = 3\n");
    expect_error<ConfigError>([&] { load_job(dir.file("typo.toml")); },
                              {dir.file("typo.toml") + ": unknown key 'quant.bitz'"});
}

TEST(Job, BundledJobFilesParseAndTheirPathsExist) {
    const Job rtn = load_job((jobs_dir() / "llama-7m-en-rtn.toml").string());
    EXPECT_EQ(rtn.quant.method, QuantMethod::Rtn);
    EXPECT_EQ(rtn.quant.bits, 4);
    EXPECT_EQ(rtn.quant.group_size, 128);
    EXPECT_FALSE(rtn.quant.sequential);
    EXPECT_EQ(rtn.data.calibration_seqs, 32);
    EXPECT_EQ(rtn.data.eval.size(), 2u);
    EXPECT_EQ(fs::path(rtn.model.path).filename().string(), "llama-7m-en");
    EXPECT_EQ(fs::path(rtn.run.out).filename().string(), "llama-7m-en-rtn");

    const Job gptq = load_job((jobs_dir() / "stories260k-gptq.toml").string());
    EXPECT_EQ(gptq.quant.method, QuantMethod::Gptq);
    EXPECT_EQ(gptq.quant.group_size, 64);
    EXPECT_TRUE(gptq.quant.sequential);
    EXPECT_EQ(fs::path(gptq.model.path).filename().string(), "stories260k");

    for (const Job* j : {&rtn, &gptq}) {
        // The bundled data live in ../shared beside the checkout (tests never skip).
        EXPECT_TRUE(fs::is_directory(j->model.path)) << j->model.path;
        EXPECT_TRUE(fs::is_regular_file(fs::path(j->model.path) / "config.json")) << j->model.path;
        EXPECT_TRUE(fs::is_regular_file(j->data.calibration)) << j->data.calibration;
        for (const auto& e : j->data.eval) EXPECT_TRUE(fs::is_regular_file(e)) << e;
        EXPECT_EQ(fs::path(j->run.out).parent_path().filename().string(), "runs");
        EXPECT_TRUE(parse_job(job_to_toml(*j), (fs::path(kDir) / "y.toml").string()) == *j);
    }
    EXPECT_TRUE(
        fs::equivalent(fs::path(rtn.model.path).parent_path(), fs::path(RQ_SHARED_DIR) / "models"));
}

TEST(Job, EveryBundledJobFileParses) {
    int n = 0;
    for (const auto& e : fs::directory_iterator(jobs_dir())) {
        if (e.path().extension() != ".toml") continue;
        ++n;
        Job j;
        try {
            j = load_job(e.path().string());
        } catch (const rq::Error& err) {
            ADD_FAILURE() << e.path() << ": " << err.what();
            continue;
        }
        EXPECT_EQ(fs::path(j.run.out).filename().string(), e.path().stem().string()) << e.path();
        if (e.path().filename().string().rfind("llama-3.", 0) == 0) {
            // Weights not bundled: the header names the config to plan with, which must load.
            const std::string text = rq::io_test::read_file(e.path().string());
            const auto        at   = text.find("--config jobs/configs/");
            ASSERT_NE(at, std::string::npos) << e.path();
            const std::string rel = text.substr(at + 9, text.find_first_of(" \n", at + 9) - at - 9);
            EXPECT_NO_THROW(
                rq::io::load_llama_config((fs::path(jobs_dir()).parent_path() / rel).string()))
                << e.path() << " " << rel;
            continue;
        }
        EXPECT_TRUE(fs::is_regular_file(fs::path(j.model.path) / "config.json")) << e.path();
        EXPECT_TRUE(fs::is_regular_file(j.data.calibration)) << e.path();
    }
    EXPECT_GE(n, 9);
}

}  // namespace
