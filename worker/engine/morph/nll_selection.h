// The NLL-guided peer: score(l) = rise of the answer-token negative log-likelihood on passkey samples when only
// layer l is made efficient (its linear branch, or sliding-window attention), all other layers full. The layers
// with the largest rise keep full attention (layout.h SelectTopK).
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/morph/gate_optimization.h"
#include "worker/engine/morph/linear_branch.h"
#include "worker/engine/morph/morphable_model.h"
#include "worker/engine/morph/progress.h"

namespace fm {

struct NllScores {
  double teacher_nll = 0;            // mean answer-token NLL of the teacher
  std::vector<double> rise;          // per layer: NLL(layer l efficient) - teacher_nll
  int64_t tokens = 0;
  double seconds = 0;
};

// Mean answer-token NLL of the model under `mixes` over `samples` (teacher-forced; answer positions of §3).
absl::StatusOr<double> AnswerNll(const MorphableModel& model, const std::vector<LayerMix>& mixes,
                                 const std::vector<MaskedSample>& samples);

// ablation: LayerMix::Mode::kLinear (the calibrated branch) or kSlidingWindow (window tokens).
absl::StatusOr<NllScores> ScoreLayersByNll(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                           const std::vector<MaskedSample>& samples, LayerMix::Mode ablation,
                                           int64_t window, ProgressSink& sink);

}  // namespace fm
