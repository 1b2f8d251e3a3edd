#include "worker/engine/morph/calibration.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/morph/calibration_pipeline.h"
#include "worker/engine/morph/optimizer.h"
#include "worker/engine/morph/stage_checkpoint.h"

namespace fm {
namespace {

struct TeacherActivations {
  std::vector<at::Tensor> inputs;   // input-normed hidden state per layer
  std::vector<at::Tensor> targets;  // attention output per layer
};

absl::StatusOr<TeacherActivations> RunTeacher(const Decoder& teacher, const at::Tensor& ids) {
  at::NoGradGuard no_grad;
  ForwardOptions opt;
  opt.return_hidden_states = true;
  opt.return_attention_outputs = true;
  opt.return_logits = false;
  FM_ASSIGN_OR_RETURN(ForwardResult r, teacher.Forward(ids, opt));
  TeacherActivations a;
  for (int64_t l = 0; l < teacher.config().num_layers; ++l) {
    a.inputs.push_back(teacher.InputNorm(l, r.hidden_states[l]));
    a.targets.push_back(r.attention_outputs[l]);
  }
  return a;
}

NamedTensorList BranchTensors(std::vector<LinearBranch>& branches) {
  NamedTensorList out;
  for (size_t l = 0; l < branches.size(); ++l)
    for (auto& [name, t] : branches[l].NamedTensors())
      out.emplace_back(StrCat("model.layers.", l, ".linear_attn.", name), *t);
  return out;
}

absl::Status LoadBranchTensors(std::vector<LinearBranch>& branches, const std::map<std::string, at::Tensor>& saved,
                               const std::string& where) {
  for (size_t l = 0; l < branches.size(); ++l)
    for (auto& [name, t] : branches[l].NamedTensors()) {
      const std::string key = StrCat("model.layers.", l, ".linear_attn.", name);
      auto it = saved.find(key);
      if (it == saved.end()) return absl::DataLossError(StrCat(where, ": tensor ", key, " is missing"));
      if (it->second.sizes() != t->sizes())
        return absl::DataLossError(StrCat(where, ": tensor ", key, " has the wrong shape"));
      // In place: the optimisers built before the load hold these very tensors.
      const at::NoGradGuard no_grad;
      t->copy_(it->second);
    }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<double>> AlignmentErrors(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                                    const at::Tensor& ids) {
  at::NoGradGuard no_grad;
  std::vector<double> err(branches.size(), 0.0);
  FM_ASSIGN_OR_RETURN(TeacherActivations acts_value, RunTeacher(teacher, ids));
  const TeacherActivations* acts = &acts_value;
  for (size_t l = 0; l < branches.size(); ++l) {
    at::Tensor fa = acts->targets[l].to(at::kDouble);
    at::Tensor la = branches[l].Forward(acts->inputs[l]).to(at::kDouble);
    err[l] = (la - fa).pow(2).sum().item<double>() / std::max(1e-30, fa.pow(2).sum().item<double>());
  }
  return err;
}

std::vector<std::unique_ptr<AdamW>> CalibrationOptimizers(std::vector<LinearBranch>& branches,
                                                          const std::vector<int64_t>& layers) {
  std::vector<std::unique_ptr<AdamW>> opts(branches.size());
  for (int64_t l : layers) {
    branches[l].SetRequiresGrad(true);
    opts[l] = std::make_unique<AdamW>(branches[l].Parameters(), AdamWSettings{});
  }
  return opts;
}

absl::StatusOr<std::vector<double>> CalibrationStep(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                                    const std::vector<int64_t>& layers,
                                                    const std::vector<std::unique_ptr<AdamW>>& optimizers,
                                                    const at::Tensor& ids, double lr) {
  for (int64_t l : layers)
    if (l < 0 || l >= static_cast<int64_t>(branches.size()) || l >= static_cast<int64_t>(optimizers.size()) ||
        !optimizers[l])
      return absl::InvalidArgumentError(StrCat("calibration step: layer ", l, " has no branch or optimiser"));
  FM_ASSIGN_OR_RETURN(TeacherActivations acts, RunTeacher(teacher, ids));
  std::vector<double> losses;
  for (int64_t l : layers) {
    at::AutoGradMode grad_on(true);
    at::Tensor out = branches[l].Forward(acts.inputs[l]);
    at::Tensor loss = (out.to(at::kFloat) - acts.targets[l].to(at::kFloat)).pow(2).mean();
    loss.backward();
    optimizers[l]->Step(lr);
    losses.push_back(loss.item<double>());
  }
  return losses;
}

absl::StatusOr<CalibrationReport> CalibrateBranches(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                                    const CalibrationPlan& plan, const TokenBatchFn& train_batch,
                                                    const at::Tensor& eval_ids, const std::string& checkpoint_dir,
                                                    ProgressSink& sink) {
  const int64_t L = teacher.config().num_layers;
  std::vector<int64_t> layers = plan.layers;
  if (layers.empty())
    for (int64_t l = 0; l < L; ++l) layers.push_back(l);
  for (int64_t l : layers)
    if (l < 0 || l >= L) return absl::InvalidArgumentError(StrCat("calibration: layer ", l, " out of range"));

  StageCheckpoint ckpt(checkpoint_dir, plan.fingerprint);
  FM_ASSIGN_OR_RETURN(std::optional<nlohmann::json> state, ckpt.LoadState());
  CalibrationReport report;
  std::optional<CalibrationShards> shards;
  if (plan.parallel_teachers.size() > 1 && !(state && (*state).value("done", false))) {
    FM_ASSIGN_OR_RETURN(shards, MakeCalibrationShards(plan.parallel_teachers));
  }
  if (!state) {
    FM_ASSIGN_OR_RETURN(report.error_before, AlignmentErrors(teacher, branches, eval_ids));
  }
  if (shards) {  // each branch trains on its shard's device
    try {
      for (int64_t l = 0; l < L; ++l) branches[l].To(teacher.dtype(), shards->device(shards->ShardOf(l)));
    } catch (const c10::Error& e) {
      return absl::InternalError(StrCat("moving the branches to their devices failed: ", e.what_without_backtrace()));
    }
  }
  std::vector<std::unique_ptr<AdamW>> opts = CalibrationOptimizers(branches, layers);
  int64_t start = 0;
  double resumed_seconds = 0;
  if (state) {
    FM_ASSIGN_OR_RETURN(auto saved, ckpt.LoadFile(*state, "branches"));
    FM_RETURN_IF_ERROR(LoadBranchTensors(branches, saved, ckpt.dir()));
    report.error_before = (*state)["error_before"].get<std::vector<double>>();
    start = (*state)["step"].get<int64_t>();
    resumed_seconds = (*state).value("seconds", 0.0);
    if ((*state).value("done", false)) {
      for (int64_t l : layers) branches[l].SetRequiresGrad(false);
      report.error_after = (*state)["error_after"].get<std::vector<double>>();
      report.final_loss = (*state)["final_loss"].get<std::vector<double>>();
      report.steps = start;
      report.tokens = (*state)["tokens"].get<int64_t>();
      report.seconds = resumed_seconds;
      sink.OnProgress({Stage::kCalibration,
                       "resume",
                       start,
                       plan.steps,
                       0,
                       0,
                       {},
                       {},
                       "calibration already complete (checkpoint)"});
      return report;
    }
    FM_ASSIGN_OR_RETURN(auto opt_state, ckpt.LoadFile(*state, "optimizer"));
    for (int64_t l : layers) {
      std::vector<std::pair<std::string, at::Tensor>> mine;
      const std::string prefix = StrCat("layer", l, ".");
      for (const auto& [k, v] : opt_state)
        if (k.rfind(prefix, 0) == 0) mine.emplace_back(k.substr(prefix.size()), v);
      opts[l]->LoadState(mine);
    }
    report.tokens = (*state)["tokens"].get<int64_t>();
  }

  report.final_loss.assign(L, 0.0);
  auto save = [&](int64_t step, bool done) -> absl::Status {
    nlohmann::json s = {{"step", step},
                        {"done", done},
                        {"tokens", report.tokens},
                        {"error_before", report.error_before},
                        {"final_loss", report.final_loss},
                        {"seconds", report.seconds}};
    if (done) s["error_after"] = report.error_after;
    NamedTensorList opt_tensors;
    for (int64_t l : layers)
      for (auto& [k, v] : opts[l]->State()) opt_tensors.emplace_back(StrCat("layer", l, ".", k), v);
    std::map<std::string, NamedTensorList> groups = {{"branches", BranchTensors(branches)}};
    if (!done) groups["optimizer"] = opt_tensors;
    return ckpt.Save(s, groups, step);
  };

  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return resumed_seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const double floor_lr = plan.learning_rate * plan.final_lr_fraction;
  auto lr_of = [&](int64_t step) {
    return CosineLr(step, plan.steps, plan.learning_rate, floor_lr, plan.warmup_steps);
  };
  int64_t run_tokens = 0;
  // Bookkeeping after a step: losses, tokens, the progress event.
  auto after_step = [&](int64_t step, const std::vector<double>& losses, int64_t tokens) {
    double mean_loss = 0;
    for (size_t i = 0; i < layers.size(); ++i) {
      report.final_loss[layers[i]] = losses[i];
      mean_loss += losses[i] / static_cast<double>(layers.size());
    }
    report.tokens += tokens;
    run_tokens += tokens;
    ProgressEvent ev{Stage::kCalibration, "branches", step + 1, plan.steps, 0, 0, {}, {}, ""};
    ev.elapsed_seconds = elapsed();
    const double run_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ev.tokens_per_second = run_seconds > 0 ? static_cast<double>(run_tokens) / run_seconds : 0;
    ev.metrics = {{"mse", mean_loss}, {"lr", lr_of(step)}};
    sink.OnProgress(ev);
  };
  auto checkpoint_due = [&](int64_t done) {
    return plan.checkpoint_every > 0 && done % plan.checkpoint_every == 0 && done < plan.steps;
  };
  if (shards) {
    // Pipelined over the devices, in segments that end at the checkpoints (the pipeline drains there).
    std::vector<int64_t> batch_tokens(plan.steps, 0);
    for (int64_t step = start; step < plan.steps;) {
      if (sink.CancelRequested()) {
        report.seconds = elapsed();
        FM_RETURN_IF_ERROR(save(step, false));
        return absl::CancelledError(StrCat("calibration cancelled at step ", step));
      }
      int64_t end = plan.steps;
      if (plan.checkpoint_every > 0) end = std::min(end, (step / plan.checkpoint_every + 1) * plan.checkpoint_every);
      bool cancelled = false;
      CalibrationPipelineSteps seg;
      seg.first = step;
      seg.end = end;
      seg.batch = [&](int64_t k) -> absl::StatusOr<at::Tensor> {
        FM_ASSIGN_OR_RETURN(at::Tensor ids, train_batch(k));
        batch_tokens[k] = ids.numel();
        return ids;
      };
      seg.lr = lr_of;
      seg.on_step = [&](int64_t k, const std::vector<double>& losses) {
        after_step(k, losses, batch_tokens[k]);
        if (sink.CancelRequested()) cancelled = true;
        return !cancelled;
      };
      FM_ASSIGN_OR_RETURN(step, RunCalibrationPipeline(*shards, branches, layers, opts, seg));
      if (cancelled) {
        report.seconds = elapsed();
        FM_RETURN_IF_ERROR(save(step, false));
        return absl::CancelledError(StrCat("calibration cancelled at step ", step));
      }
      if (checkpoint_due(step)) {
        report.seconds = elapsed();
        FM_RETURN_IF_ERROR(save(step, false));
      }
    }
    // Back to the teacher's devices for what follows (alignment errors, the other stages).
    try {
      for (int64_t l = 0; l < L; ++l) branches[l].To(teacher.dtype(), teacher.LayerDevice(l));
    } catch (const c10::Error& e) {
      return absl::InternalError(StrCat("moving the branches back failed: ", e.what_without_backtrace()));
    }
  }
  for (int64_t step = shards ? plan.steps : start; step < plan.steps; ++step) {
    if (sink.CancelRequested()) {
      report.seconds = elapsed();
      FM_RETURN_IF_ERROR(save(step, false));
      return absl::CancelledError(StrCat("calibration cancelled at step ", step));
    }
    FM_ASSIGN_OR_RETURN(at::Tensor ids, train_batch(step));
    FM_ASSIGN_OR_RETURN(std::vector<double> losses, CalibrationStep(teacher, branches, layers, opts, ids, lr_of(step)));
    after_step(step, losses, ids.numel());
    if (checkpoint_due(step + 1)) {
      report.seconds = elapsed();
      FM_RETURN_IF_ERROR(save(step + 1, false));
    }
  }
  for (int64_t l : layers) branches[l].SetRequiresGrad(false);
  FM_ASSIGN_OR_RETURN(report.error_after, AlignmentErrors(teacher, branches, eval_ids));
  report.steps = plan.steps;
  report.seconds = elapsed();
  FM_RETURN_IF_ERROR(save(plan.steps, true));
  return report;
}

}  // namespace fm
