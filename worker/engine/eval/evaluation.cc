#include "worker/engine/eval/evaluation.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "worker/engine/common/str_cat.h"

namespace fm {

absl::StatusOr<RecallScore> PasskeyRecall(const MorphableModel& model, const std::vector<LayerMix>& mixes,
                                          const std::vector<MaskedSample>& samples) {
  at::NoGradGuard no_grad;
  RecallScore r;
  int64_t correct_tokens = 0, recalled = 0;
  for (const MaskedSample& s : samples) {
    at::Tensor ids = s.ids.to(model.decoder().device());
    const int64_t T = ids.size(1);
    at::Tensor x = model.Forward(ids, mixes);
    at::Tensor pred = model.decoder().Head(x).argmax(-1)[0].to(at::kCPU);  // pred[t] guesses token t+1
    at::Tensor mask = s.answer_mask.reshape({-1}).to(at::kCPU, at::kBool).contiguous();
    at::Tensor cpu_ids = s.ids.reshape({-1}).to(at::kCPU, at::kLong).contiguous();
    const bool* m = mask.data_ptr<bool>();
    const int64_t* id = cpu_ids.data_ptr<int64_t>();
    const int64_t* p = pred.contiguous().data_ptr<int64_t>();
    bool in_run = false, run_ok = true;
    for (int64_t t = 1; t <= T; ++t) {
      const bool masked = t < T && m[t];
      if (masked) {
        const bool ok = p[t - 1] == id[t];
        correct_tokens += ok;
        ++r.tokens;
        if (!in_run) {
          in_run = true;
          run_ok = true;
        }
        run_ok = run_ok && ok;
      } else if (in_run) {  // a run of answer tokens (one passkey) ended
        in_run = false;
        ++r.passkeys;
        recalled += run_ok;
      }
    }
  }
  if (r.tokens == 0) return absl::InvalidArgumentError("passkey recall: no answer tokens in the samples");
  r.token_accuracy = static_cast<double>(correct_tokens) / static_cast<double>(r.tokens);
  r.passkey_recall = static_cast<double>(recalled) / static_cast<double>(r.passkeys);
  return r;
}

absl::StatusOr<TextScore> TextAgreement(const Decoder& teacher, const MorphableModel& model,
                                        const std::vector<LayerMix>& mixes, const at::Tensor& windows) {
  at::NoGradGuard no_grad;
  if (!windows.defined() || windows.dim() != 2 || windows.size(1) < 2)
    return absl::InvalidArgumentError("text agreement: windows must be [N, T>=2] token ids");
  TextScore r;
  double teacher_nll = 0, model_nll = 0, kl = 0;
  for (int64_t i = 0; i < windows.size(0); ++i) {
    at::Tensor ids = windows.narrow(0, i, 1).to(model.decoder().device());
    const int64_t T = ids.size(1);
    auto teacher_out = teacher.Forward(ids);
    if (!teacher_out.ok()) return teacher_out.status();
    at::Tensor lt = at::log_softmax(teacher_out->logits[0].narrow(0, 0, T - 1), -1);
    at::Tensor lm = at::log_softmax(model.decoder().Head(model.Forward(ids, mixes))[0].narrow(0, 0, T - 1), -1);
    // Layer sharding: ids live with the embeddings, logits with the LM head.
    at::Tensor targets = ids[0].narrow(0, 1, T - 1).to(lt.device());
    lm = lm.to(lt.device());
    teacher_nll -= lt.gather(1, targets.unsqueeze(1)).sum().item<double>();
    model_nll -= lm.gather(1, targets.unsqueeze(1)).sum().item<double>();
    kl += (lt.exp() * (lt - lm)).sum().item<double>();
    r.tokens += T - 1;
  }
  const double n = static_cast<double>(r.tokens);
  r.teacher_ppl = std::exp(teacher_nll / n);
  r.model_ppl = std::exp(model_nll / n);
  r.kl = kl / n;
  return r;
}

}  // namespace fm
