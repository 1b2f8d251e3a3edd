// Layer-parallel branch calibration over several devices (docs/ENGINE.md §7). The layers are split into contiguous
// shards, one per device. Shard s runs the frozen teacher's layers of its range on its own decoder (a full replica
// on its device, or one layer-sharded decoder shared by every shard), trains those layers' branches exactly as
// CalibrationStep does, and hands the residual stream to shard s+1. The shards work on successive steps at once (a
// pipeline): while shard s+1 computes step k, shard s computes step k+1. The teacher is frozen and each branch sees
// only its own layer's input, so every branch receives the same updates as in the single-device step sequence.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/morph/linear_branch.h"
#include "worker/engine/morph/optimizer.h"

namespace fm {

struct CalibrationShards {
  std::vector<const Decoder*> teachers;  // per shard; layers [first_layer[s], first_layer[s+1]) on one device
  std::vector<int64_t> first_layer;      // per shard, plus the end (num_layers)
  int64_t size() const { return static_cast<int64_t>(teachers.size()); }
  at::Device device(int64_t s) const { return teachers[s]->LayerDevice(first_layer[s]); }
  int64_t ShardOf(int64_t layer) const;
};

// Shards over `teachers` (one per device, each holding at least its shard's layers on that device) with a balanced
// contiguous split. INVALID_ARGUMENT for more shards than layers or an empty list.
absl::StatusOr<CalibrationShards> MakeCalibrationShards(std::vector<const Decoder*> teachers);

struct CalibrationPipelineSteps {
  int64_t first = 0, end = 0;                                // steps [first, end)
  std::function<absl::StatusOr<at::Tensor>(int64_t)> batch;  // ids [B, T] of a step (called from shard 0's thread)
  std::function<double(int64_t)> lr;                         // learning rate of a step
  // Called from the calling thread in step order once every shard finished the step, with the losses in `layers`
  // order; returning false stops the pipeline: no new step starts, the steps in flight finish (and are reported).
  std::function<bool(int64_t step, const std::vector<double>& losses)> on_step;
};

// Runs the steps; branch l (and optimizers[l]) must live on its shard's device. Returns the number of the first
// step not run (steps.end, or earlier after a stop). The first error of any shard is returned after the others
// stopped.
absl::StatusOr<int64_t> RunCalibrationPipeline(const CalibrationShards& shards, std::vector<LinearBranch>& branches,
                                               const std::vector<int64_t>& layers,
                                               const std::vector<std::unique_ptr<AdamW>>& optimizers,
                                               const CalibrationPipelineSteps& steps);

}  // namespace fm
