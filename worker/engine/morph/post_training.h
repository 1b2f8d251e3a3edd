// Stage 4: post-training of the discrete hybrid. Phase "distill": KL(teacher || hybrid) on the next-token
// distributions of generic text; phase "long_context": next-token cross-entropy on long samples (passkey + prose).
// What trains is a setting: the linear branches (default) or everything (the hybrid then owns a copy of the
// teacher's weights). Checkpointed per phase; a resumed run continues from the last checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/morph/calibration.h"
#include "worker/engine/morph/gate_optimization.h"
#include "worker/engine/morph/linear_branch.h"
#include "worker/engine/morph/morphable_model.h"
#include "worker/engine/morph/progress.h"

namespace fm {

struct PostTrainPlan {
  std::string fingerprint;  // settings that a resumed checkpoint must share (see StageCheckpoint)
  int64_t distill_steps = 0;
  int64_t long_context_steps = 0;
  double learning_rate = 3e-4;
  int64_t warmup_steps = 0;
  bool train_all = false;
  bool checkpointing = true;
  int64_t checkpoint_every = 50;
};

struct PostTrainReport {
  std::vector<double> distill_loss, long_context_loss;  // per step
  int64_t tokens = 0;
  double seconds = 0;
};

// `student` is the decoder whose layers run full attention in the hybrid: the teacher itself when only branches
// train, or a deep copy of it when everything trains.
absl::StatusOr<PostTrainReport> PostTrain(const Decoder& teacher, const Decoder& student,
                                          std::vector<LinearBranch>& branches, const std::vector<LayerMix>& layout,
                                          const PostTrainPlan& plan, const TokenBatchFn& distill_batch,
                                          const MaskedSampleFn& long_samples, const std::string& checkpoint_dir,
                                          ProgressSink& sink);

}  // namespace fm
