// Stage 1: branch calibration. Teacher-forced: every layer's branch sees the frozen teacher's input-normed hidden
// states and learns to reproduce that layer's attention output (MSE), with AdamW and a cosine schedule. Layers are
// independent; one teacher forward per step feeds all of them (or the `layers` subset, for layer-parallel workers).
// Checkpoints every `checkpoint_every` steps; a rerun with the same inputs resumes and ends identically.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/morph/linear_branch.h"
#include "worker/engine/morph/optimizer.h"
#include "worker/engine/morph/progress.h"

namespace fm {

// Token ids [B, T] (int64) for a step; a pure function of the step so resumed runs see the same data.
using TokenBatchFn = std::function<absl::StatusOr<at::Tensor>(int64_t step)>;

struct CalibrationPlan {
  std::string fingerprint;  // settings that a resumed checkpoint must share (see StageCheckpoint)
  int64_t steps = 0;
  int64_t warmup_steps = 0;
  double learning_rate = 1e-3;
  double final_lr_fraction = 0.1;
  int64_t checkpoint_every = 50;
  std::vector<int64_t> layers;  // empty = every layer
  // Layer-parallel calibration (calibration_pipeline.h): one teacher per device — full replicas, or the same
  // layer-sharded decoder repeated — whose layers are split into contiguous shards trained as a pipeline. Empty or
  // one entry: the single-device loop. Not part of the fingerprint (the updates are the same).
  std::vector<const Decoder*> parallel_teachers;
};

struct CalibrationReport {
  std::vector<double> error_before, error_after;  // per layer: ||LA - FA||^2 / ||FA||^2 on held-out windows
  std::vector<double> final_loss;                 // per layer: MSE of the last step
  int64_t steps = 0, tokens = 0;
  double seconds = 0;
};

// Relative alignment error of every branch on `ids` (no grad).
absl::StatusOr<std::vector<double>> AlignmentErrors(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                                    const at::Tensor& ids);

// The stage's optimiser setup: makes the branches of `layers` trainable and gives each its own AdamW (default
// settings). The result is indexed by layer (null for layers not in `layers`).
std::vector<std::unique_ptr<AdamW>> CalibrationOptimizers(std::vector<LinearBranch>& branches,
                                                          const std::vector<int64_t>& layers);

// One step of the stage, as CalibrateBranches runs it (and bench/gateopt_bench.cc times it): one teacher forward on
// `ids` (no grad) feeds every layer in `layers`; branch l's loss MSE(LA_l(x_l), FA_l(x_l)) is backpropagated into its
// parameters and optimizers[l] takes one AdamW step with learning rate `lr`. Returns the losses, one per entry of
// `layers`; INVALID_ARGUMENT for a layer without a branch or optimiser, or ids the teacher rejects.
absl::StatusOr<std::vector<double>> CalibrationStep(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                                    const std::vector<int64_t>& layers,
                                                    const std::vector<std::unique_ptr<AdamW>>& optimizers,
                                                    const at::Tensor& ids, double lr);

absl::StatusOr<CalibrationReport> CalibrateBranches(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                                    const CalibrationPlan& plan, const TokenBatchFn& train_batch,
                                                    const at::Tensor& eval_ids, const std::string& checkpoint_dir,
                                                    ProgressSink& sink);

}  // namespace fm
