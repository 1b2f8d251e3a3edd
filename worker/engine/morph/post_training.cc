#include "worker/engine/morph/post_training.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <memory>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/morph/optimizer.h"
#include "worker/engine/morph/stage_checkpoint.h"

namespace fm {

namespace {

absl::StatusOr<at::Tensor> TeacherLogProbs(const Decoder& teacher, const at::Tensor& ids) {
  at::NoGradGuard no_grad;
  FM_ASSIGN_OR_RETURN(ForwardResult r, teacher.Forward(ids));
  return at::log_softmax(r.logits, -1);
}

}  // namespace

absl::StatusOr<PostTrainReport> PostTrain(const Decoder& teacher, const Decoder& student,
                                          std::vector<LinearBranch>& branches, const std::vector<LayerMix>& layout,
                                          const PostTrainPlan& plan, const TokenBatchFn& distill_batch,
                                          const MaskedSampleFn& long_samples, const std::string& checkpoint_dir,
                                          ProgressSink& sink) {
  // Trainable tensors: branches of the layers that use them, and with train_all every student weight.
  std::vector<std::pair<std::string, at::Tensor*>> named;
  for (size_t l = 0; l < branches.size(); ++l) {
    if (layout[l].mode == LayerMix::Mode::kFull) continue;
    for (auto& [n, t] : branches[l].NamedTensors())
      named.emplace_back(StrCat("model.layers.", l, ".linear_attn.", n), t);
  }
  if (plan.train_all) {
    if (&student == &teacher)
      return absl::InvalidArgumentError("post-training all weights needs a student copy of the teacher");
    auto& w = const_cast<DecoderWeights&>(student.weights());  // the student copy is ours to train
    for (auto& nt : NamedDecoderTensors(w, student.config().tie_word_embeddings)) named.push_back(nt);
  }
  auto& student_weights = const_cast<DecoderWeights&>(student.weights());
  const bool retie = plan.train_all && student.config().tie_word_embeddings;
  for (auto& [n, t] : named) *t = t->detach().requires_grad_(true);
  if (retie) student_weights.lm_head = student_weights.embed_tokens;
  auto params = [&] {
    std::vector<at::Tensor> p;
    for (auto& [n, t] : named) p.push_back(*t);
    return p;
  };
  MorphableModel model(&student, &branches);

  StageCheckpoint ckpt(checkpoint_dir, plan.fingerprint);
  FM_ASSIGN_OR_RETURN(std::optional<nlohmann::json> state, ckpt.LoadState());
  PostTrainReport report;
  int64_t start = 0;
  double resumed_seconds = 0;
  std::unique_ptr<AdamW> opt = std::make_unique<AdamW>(params(), AdamWSettings{});
  if (state) {
    FM_ASSIGN_OR_RETURN(auto saved, ckpt.LoadFile(*state, "weights"));
    for (auto& [n, t] : named) {
      auto it = saved.find(n);
      if (it == saved.end() || it->second.sizes() != t->sizes())
        return absl::DataLossError(StrCat(ckpt.dir(), ": tensor ", n, " missing or of the wrong shape"));
      *t = it->second.to(t->device(), t->scalar_type()).detach().requires_grad_(true);
    }
    if (retie) student_weights.lm_head = student_weights.embed_tokens;
    opt = std::make_unique<AdamW>(params(), AdamWSettings{});
    if (!(*state).value("done", false)) {
      FM_ASSIGN_OR_RETURN(auto opt_state, ckpt.LoadFile(*state, "optimizer"));
      opt->LoadState({opt_state.begin(), opt_state.end()});
    }
    start = (*state)["step"].get<int64_t>();
    report.distill_loss = (*state)["distill_loss"].get<std::vector<double>>();
    report.long_context_loss = (*state)["long_context_loss"].get<std::vector<double>>();
    report.tokens = (*state)["tokens"].get<int64_t>();
    resumed_seconds = (*state).value("seconds", 0.0);
  }
  const int64_t total = plan.distill_steps + plan.long_context_steps;
  auto save = [&](int64_t step) {
    nlohmann::json s = {{"step", step},
                        {"done", step >= total},
                        {"tokens", report.tokens},
                        {"distill_loss", report.distill_loss},
                        {"long_context_loss", report.long_context_loss},
                        {"seconds", report.seconds}};
    NamedTensorList w;
    for (auto& [n, t] : named) w.emplace_back(n, *t);
    std::map<std::string, NamedTensorList> groups = {{"weights", w}};
    if (step < total) groups["optimizer"] = opt->State();
    return ckpt.Save(s, groups, step);
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return resumed_seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  int64_t run_tokens = 0;
  for (int64_t step = start; step < total; ++step) {
    if (sink.CancelRequested()) {
      report.seconds = elapsed();
      FM_RETURN_IF_ERROR(save(step));
      return absl::CancelledError(StrCat("post-training cancelled at step ", step));
    }
    const bool distill = step < plan.distill_steps;
    // One cosine schedule per phase.
    const int64_t phase_step = distill ? step : step - plan.distill_steps;
    const int64_t phase_total = distill ? plan.distill_steps : plan.long_context_steps;
    const double lr = CosineLr(phase_step, phase_total, plan.learning_rate, plan.learning_rate * 0.1,
                               std::min(plan.warmup_steps, phase_total / 10));
    double loss_value = 0;
    int64_t tokens = 0;
    if (distill) {
      FM_ASSIGN_OR_RETURN(at::Tensor ids, distill_batch(phase_step));
      FM_ASSIGN_OR_RETURN(at::Tensor teacher_logp, TeacherLogProbs(teacher, ids));
      at::Tensor loss = model.ForwardBackward(
          ids, layout,
          [&](const at::Tensor& x_last) {
            at::Tensor logp = at::log_softmax(student.Head(x_last), -1);
            // KL(teacher || student), mean over positions.
            return (teacher_logp.exp() * (teacher_logp - logp)).sum(-1).mean();
          },
          plan.checkpointing);
      loss_value = loss.item<double>();
      report.distill_loss.push_back(loss_value);
      tokens = ids.numel();
    } else {
      FM_ASSIGN_OR_RETURN(MaskedSample s, long_samples(phase_step));
      at::Tensor ids = s.ids.to(student.device());
      at::Tensor targets = ids.narrow(1, 1, ids.size(1) - 1).reshape({-1});
      at::Tensor loss = model.ForwardBackward(
          ids, layout,
          [&](const at::Tensor& x_last) {
            at::Tensor logits = student.Head(x_last.narrow(1, 0, x_last.size(1) - 1));
            return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.to(logits.device()));
          },
          plan.checkpointing);
      loss_value = loss.item<double>();
      report.long_context_loss.push_back(loss_value);
      tokens = ids.numel();
    }
    opt->Step(lr);
    report.tokens += tokens;
    run_tokens += tokens;
    ProgressEvent ev{Stage::kPostTraining, distill ? "distill" : "long_context", step + 1, total, 0, 0, {}, {}, ""};
    ev.elapsed_seconds = elapsed();
    const double run_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ev.tokens_per_second = run_seconds > 0 ? static_cast<double>(run_tokens) / run_seconds : 0;
    ev.metrics = {{distill ? "kl" : "nll", loss_value}, {"lr", lr}};
    sink.OnProgress(ev);
    if (plan.checkpoint_every > 0 && (step + 1) % plan.checkpoint_every == 0 && step + 1 < total) {
      report.seconds = elapsed();
      FM_RETURN_IF_ERROR(save(step + 1));
    }
  }
  for (auto& [n, t] : named) *t = t->detach();
  if (retie) student_weights.lm_head = student_weights.embed_tokens;
  report.seconds = elapsed();
  if (!state || !(*state).value("done", false)) FM_RETURN_IF_ERROR(save(total));
  return report;
}

}  // namespace fm
