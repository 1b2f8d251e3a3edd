// Evaluation of a teacher and a hybrid on the same inputs: needle-in-a-haystack (passkey) recall, teacher-forced
// (a passkey counts as recalled when the model's argmax predicts every one of its answer tokens; word accuracy is
// the fraction of answer tokens predicted), and perplexity / KL(teacher || hybrid) on held-out text.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/morph/gate_optimization.h"
#include "worker/engine/morph/morphable_model.h"

namespace fm {

struct RecallScore {
  double token_accuracy = 0;  // answer tokens predicted / answer tokens
  double passkey_recall = 0;  // passkeys fully predicted / passkeys
  int64_t passkeys = 0, tokens = 0;
};

struct TextScore {
  double teacher_ppl = 0, model_ppl = 0;
  double kl = 0;  // mean over positions of KL(teacher || model), nats
  int64_t tokens = 0;
};

absl::StatusOr<RecallScore> PasskeyRecall(const MorphableModel& model, const std::vector<LayerMix>& mixes,
                                          const std::vector<MaskedSample>& samples);

// `windows`: int64 [N, T] held-out token windows.
absl::StatusOr<TextScore> TextAgreement(const Decoder& teacher, const MorphableModel& model,
                                        const std::vector<LayerMix>& mixes, const at::Tensor& windows);

}  // namespace fm
