#include "worker/engine/morph/nll_selection.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm {

absl::StatusOr<double> AnswerNll(const MorphableModel& model, const std::vector<LayerMix>& mixes,
                                 const std::vector<MaskedSample>& samples) {
  at::NoGradGuard no_grad;
  double total = 0;
  int64_t count = 0;
  for (const MaskedSample& s : samples) {
    at::Tensor ids = s.ids.to(model.decoder().device());
    at::Tensor mask = s.answer_mask.reshape({-1}).to(at::kBool);
    at::Tensor targets_at = mask.narrow(0, 1, mask.size(0) - 1).nonzero().reshape({-1});  // t-1 for masked t
    if (targets_at.numel() == 0) return absl::InvalidArgumentError("passkey sample without answer tokens");
    at::Tensor x = model.Forward(ids, mixes);
    at::Tensor pos = targets_at.to(x.device());
    at::Tensor logits = model.decoder().Head(x[0].index_select(0, pos));
    // Layer sharding: ids live with the embeddings, logits with the LM head.
    at::Tensor targets = ids[0].index_select(0, (pos + 1).to(ids.device())).to(logits.device());
    total += at::cross_entropy_loss(logits, targets, {}, at::Reduction::Sum).item<double>();
    count += pos.numel();
  }
  return total / static_cast<double>(count);
}

absl::StatusOr<NllScores> ScoreLayersByNll(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                           const std::vector<MaskedSample>& samples, LayerMix::Mode ablation,
                                           int64_t window, ProgressSink& sink) {
  if (ablation != LayerMix::Mode::kLinear && ablation != LayerMix::Mode::kSlidingWindow)
    return absl::InvalidArgumentError("NLL ablation must be the linear branch or a sliding window");
  if (samples.empty()) return absl::InvalidArgumentError("NLL selection needs at least one passkey sample");
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t L = teacher.config().num_layers;
  MorphableModel model(&teacher, &branches);
  std::vector<LayerMix> mixes(L);
  NllScores out;
  FM_ASSIGN_OR_RETURN(out.teacher_nll, AnswerNll(model, mixes, samples));
  int64_t sample_tokens = 0;
  for (const MaskedSample& s : samples) sample_tokens += s.ids.numel();
  for (int64_t l = 0; l < L; ++l) {
    if (sink.CancelRequested()) return absl::CancelledError(StrCat("NLL selection cancelled at layer ", l));
    mixes[l].mode = ablation;
    mixes[l].window = window;
    FM_ASSIGN_OR_RETURN(double nll, AnswerNll(model, mixes, samples));
    mixes[l] = LayerMix{};
    out.rise.push_back(nll - out.teacher_nll);
    out.tokens += sample_tokens;
    ProgressEvent ev{Stage::kSelection, "nll", l + 1, L, 0, 0, {}, {}, ""};
    ev.elapsed_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ev.tokens_per_second = ev.elapsed_seconds > 0 ? static_cast<double>(out.tokens) / ev.elapsed_seconds : 0;
    ev.metrics = {{"layer", static_cast<double>(l)}, {"nll", nll}, {"teacher_nll", out.teacher_nll}};
    sink.OnProgress(ev);
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace fm
