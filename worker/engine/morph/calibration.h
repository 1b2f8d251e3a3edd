// Stage 1: branch calibration. Teacher-forced: every layer's branch sees the frozen teacher's input-normed hidden
// states and learns to reproduce that layer's attention output (MSE), with AdamW and a cosine schedule. Layers are
// independent; one teacher forward per step feeds all of them (or the `layers` subset, for layer-parallel workers).
// Checkpoints every `checkpoint_every` steps; a rerun with the same inputs resumes and ends identically.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/morph/linear_branch.h"
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

absl::StatusOr<CalibrationReport> CalibrateBranches(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                                    const CalibrationPlan& plan, const TokenBatchFn& train_batch,
                                                    const at::Tensor& eval_ids, const std::string& checkpoint_dir,
                                                    ProgressSink& sink);

}  // namespace fm
