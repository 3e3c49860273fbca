#pragma once
#include <memory>

#include <ATen/core/Tensor.h>

#include "requant/parallel/transport.h"

// A one-rank Transport without MPI, for unit tests of collective algorithms on one process:
// every collective over one rank leaves its tensor as it is. Point-to-point has no peer and
// keeps the base class's "does not support" error.

namespace rq::test {

class SoloTransport : public parallel::Transport {
    class Done : public parallel::Work {
      public:
        void wait() override {}
        bool is_completed() override { return true; }
    };

  public:
    const char*                     name() const override { return "solo"; }
    int                             rank() const override { return 0; }
    int                             size() const override { return 1; }
    std::unique_ptr<parallel::Work> broadcast(at::Tensor&, int) override {
        return std::make_unique<Done>();
    }
    std::unique_ptr<parallel::Work> allreduce_sum(at::Tensor&) override {
        return std::make_unique<Done>();
    }
    std::unique_ptr<parallel::Work> barrier() override { return std::make_unique<Done>(); }
};

}  // namespace rq::test
