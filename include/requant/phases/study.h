#pragma once
#include <map>
#include <string>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "requant/io/job.h"
#include "requant/model/llama.h"
#include "requant/parallel/schedule.h"
#include "requant/parallel/transport.h"
#include "requant/sensitivity/pqi.h"

// The sensitivity phase of `requant-dist sensitivity` (issue 5, PAPER.md §1-§3), on every rank:
//  1. PQI of every weight between w and w~ on the calibration set (fp32, sensitivity.rule with
//     sensitivity.nodes intervals); with sensitivity.study, phi(t) = dF/dt also on the grid
//     j/(2N), which gives every rule's estimate for each N' dividing N (Table 3) in the same
//     passes;
//  2. per-weight PQI into HDF5: OUT/pqi/layer-NNN.h5 (written by the rank that owns the layer,
//     one float32 [O, I] dataset per linear, "q_proj" .. "down_proj") and OUT/pqi.h5 (rank 0:
//     external links /layers/NNN to those files, the per-linear sums, the path samples and the
//     self-test as attributes);
//  3. with sensitivity.study: the Taylor terms and the actual per-layer and lambda-path dF on an
//     fp64 copy of the stage (sensitivity/taylor.h), the share of the total PQI held by the top
//     weights (distributed ranking), and the report under OUT/report/ (pipeline/report.h).

namespace rq::phases {

// `stage` holds w (fp32) on entry and on return; w_quant: this rank's w~. Returns the
// "sensitivity" object of results.json (complete on rank 0). Adds phase times to `phases`.
nlohmann::json sensitivity_study(model::Stage& stage, parallel::Transport& t,
                                 const model::StageTensors& w_quant, const at::Tensor& calib,
                                 const io::Job& job, const parallel::ScheduleOptions& schedule,
                                 std::map<std::string, double>& phases);

}  // namespace rq::phases
