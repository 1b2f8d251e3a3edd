#include "worker/engine/morph/gate_optimization.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/morph/morphable_model.h"
#include "worker/engine/morph/optimizer.h"
#include "worker/engine/morph/stage_checkpoint.h"

namespace fm {
namespace {

// Positions that predict an answer token: t-1 for every masked t (docs/ENGINE.md §3).
at::Tensor PredictingPositions(const at::Tensor& answer_mask) {
  at::Tensor m = answer_mask.reshape({-1}).to(at::kBool);
  at::Tensor shifted = at::zeros_like(m);
  shifted.narrow(0, 0, m.size(0) - 1).copy_(m.narrow(0, 1, m.size(0) - 1));
  return shifted.nonzero().reshape({-1});
}

// The teacher's final hidden states at `positions` (its last layer forms only those rows).
absl::StatusOr<at::Tensor> TeacherAnswerHidden(const Decoder& teacher, const MaskedSample& s,
                                               const at::Tensor& positions) {
  at::NoGradGuard no_grad;
  ForwardOptions opt;
  opt.return_logits = false;
  opt.final_rows = positions;
  FM_ASSIGN_OR_RETURN(ForwardResult r, teacher.Forward(s.ids, opt));
  return r.final_hidden[0].to(at::kFloat);
}

std::vector<double> ToVector(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU, at::kDouble).contiguous().reshape({-1});
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace

absl::StatusOr<double> AnswerHiddenDistance(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                            const at::Tensor& gates, const MaskedSample& sample) {
  at::NoGradGuard no_grad;
  at::Tensor pos = PredictingPositions(sample.answer_mask);
  if (pos.numel() == 0) return absl::InvalidArgumentError("sample has no answer tokens");
  FM_ASSIGN_OR_RETURN(at::Tensor target, TeacherAnswerHidden(teacher, sample, pos));
  MorphableModel model(&teacher, &branches);
  at::Tensor x = model.Forward(sample.ids, GatedMixes(gates), nullptr, nullptr, pos);
  at::Tensor h = teacher.FinalNorm(x)[0].to(at::kFloat);
  return (h - target.to(h.device())).pow(2).mean().item<double>();
}

GateState::GateState(const Decoder& teacher, bool head_level)
    : gates(at::ones({teacher.config().num_layers, head_level ? teacher.config().num_heads : 1},
                     at::TensorOptions().dtype(at::kFloat).device(teacher.device()))
                .requires_grad_(true)),
      optimizer({gates}, AdamWSettings{.grad_clip = 0}) {}

namespace {

// Forward + backward of one sample into the gradient of `gates` (loss weight `weight`); returns the distance term.
absl::StatusOr<double> SampleForwardBackward(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                             const at::Tensor& gates, const GatePlan& plan, const MaskedSample& s,
                                             size_t index, double weight) {
  at::Tensor pos = PredictingPositions(s.answer_mask);
  if (pos.numel() == 0) return absl::InvalidArgumentError(StrCat("passkey sample ", index, " has no answer tokens"));
  FM_ASSIGN_OR_RETURN(at::Tensor target, TeacherAnswerHidden(teacher, s, pos));
  MorphableModel model(&teacher, &branches);
  // Only the answer rows of the last layer matter to the loss: both models form just those past its attention.
  at::Tensor loss = model.ForwardBackward(
      s.ids, GatedMixes(gates),
      [&](const at::Tensor& x_last) {
        at::Tensor h = teacher.FinalNorm(x_last)[0].to(at::kFloat);
        return (h - target.to(h.device())).pow(2).mean() * weight;
      },
      plan.checkpointing, pos);
  return loss.item<double>();
}

// The end of every step: the sparsity gradient, the AdamW update, the clamp.
void FinishGateStep(const GatePlan& plan, double lr, GateState& state, GateStepResult& result) {
  at::Tensor& gates = state.gates;
  const double penalty_scale = plan.sparsity_lambda / static_cast<double>(gates.size(1));
  // The sparsity term: d(λ/G·Σa)/da = λ/G for every gate.
  gates.mutable_grad() = gates.grad().defined() ? gates.grad() + penalty_scale : at::full_like(gates, penalty_scale);
  result.penalty = penalty_scale * gates.detach().sum().item<double>();
  state.optimizer.Step(lr);
  at::NoGradGuard no_grad;
  gates.clamp_(0.0, 1.0);
}

}  // namespace

absl::StatusOr<GateStepResult> GateOptimizationStep(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                                    const GatePlan& plan, const std::vector<MaskedSample>& samples,
                                                    double lr, GateState& state) {
  if (samples.empty()) return absl::InvalidArgumentError("gate optimisation step: no samples");
  GateStepResult result;
  const double weight = 1.0 / static_cast<double>(samples.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    FM_ASSIGN_OR_RETURN(double d, SampleForwardBackward(teacher, branches, state.gates, plan, samples[i], i, weight));
    result.distance += d;
    result.tokens += samples[i].ids.numel();
  }
  FinishGateStep(plan, lr, state, result);
  return result;
}

absl::StatusOr<GateStepResult> ParallelGateOptimizationStep(Replicas& replicas, const GatePlan& plan,
                                                            const std::vector<MaskedSample>& samples, double lr,
                                                            GateState& state) {
  if (samples.empty()) return absl::InvalidArgumentError("gate optimisation step: no samples");
  const int64_t R = std::min<int64_t>(replicas.size(), static_cast<int64_t>(samples.size()));
  const double weight = 1.0 / static_cast<double>(samples.size());
  // Replica 0 trains state.gates itself; the others a leaf copy on their device.
  std::vector<at::Tensor> gates(R);
  gates[0] = state.gates;
  for (int64_t r = 1; r < R; ++r) gates[r] = state.gates.detach().to(replicas.device(r)).clone().requires_grad_(true);
  std::vector<absl::Status> status(R);
  std::vector<GateStepResult> part(R);
  auto work = [&](int64_t r) {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      const c10::DeviceGuard guard(replicas.device(r));
      for (size_t i = r; i < samples.size(); i += R) {
        absl::StatusOr<double> d =
            SampleForwardBackward(replicas.teacher(r), replicas.branches(r), gates[r], plan, samples[i], i, weight);
        if (!d.ok()) {
          status[r] = d.status();
          return;
        }
        part[r].distance += *d;
        part[r].tokens += samples[i].ids.numel();
      }
    } catch (const c10::Error& e) {
      status[r] = absl::InternalError(
          StrCat("gate step on ", replicas.device(r).str(), " failed: ", e.what_without_backtrace()));
    } catch (const std::exception& e) {
      status[r] = absl::InternalError(StrCat("gate step on ", replicas.device(r).str(), " failed: ", e.what()));
    }
    part[r].replica_seconds = {std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
  };
  replicas.ParallelFor(R, work);
  for (const absl::Status& s : status) FM_RETURN_IF_ERROR(s);
  GateStepResult result;
  for (int64_t r = 0; r < R; ++r) {
    result.distance += part[r].distance;
    result.tokens += part[r].tokens;
    result.replica_seconds.push_back(part[r].replica_seconds.empty() ? 0.0 : part[r].replica_seconds[0]);
    if (r == 0 || !gates[r].grad().defined()) continue;
    at::Tensor g = gates[r].grad().to(state.gates.device());
    state.gates.mutable_grad() = state.gates.grad().defined() ? state.gates.grad() + g : g;
  }
  FinishGateStep(plan, lr, state, result);
  return result;
}

absl::StatusOr<GateReport> OptimizeGates(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                         const GatePlan& plan, const MaskedSampleFn& samples,
                                         const std::string& checkpoint_dir, ProgressSink& sink) {
  for (auto& b : branches) b.SetRequiresGrad(false);
  GateState gate_state(teacher, plan.head_level);
  at::Tensor& gates = gate_state.gates;
  AdamW& opt = gate_state.optimizer;

  StageCheckpoint ckpt(checkpoint_dir, plan.fingerprint);
  FM_ASSIGN_OR_RETURN(std::optional<nlohmann::json> state, ckpt.LoadState());
  GateReport report;
  int64_t start = 0;
  double resumed_seconds = 0;
  if (state) {
    FM_ASSIGN_OR_RETURN(auto saved, ckpt.LoadFile(*state, "gates"));
    auto it = saved.find("gates");
    if (it == saved.end() || it->second.sizes() != gates.sizes())
      return absl::DataLossError(StrCat(ckpt.dir(), ": gate tensor missing or of the wrong shape"));
    {
      at::NoGradGuard no_grad;
      gates.copy_(it->second);
    }
    std::vector<std::pair<std::string, at::Tensor>> opt_state;
    for (const auto& [k, v] : saved)
      if (k != "gates") opt_state.emplace_back(k, v);
    opt.LoadState(opt_state);
    start = (*state)["step"].get<int64_t>();
    report.tokens = (*state)["tokens"].get<int64_t>();
    report.history = (*state)["history"].get<std::vector<std::vector<double>>>();
    report.distance = (*state).value("distance", 0.0);
    report.penalty = (*state).value("penalty", 0.0);
    resumed_seconds = (*state).value("seconds", 0.0);
  }
  auto save = [&](int64_t step) {
    nlohmann::json s = {{"step", step},
                        {"done", step >= plan.steps},
                        {"tokens", report.tokens},
                        {"history", report.history},
                        {"distance", report.distance},
                        {"penalty", report.penalty},
                        {"seconds", report.seconds},
                        {"gates", ToVector(gates)}};
    NamedTensorList t = {{"gates", gates}};
    for (auto& kv : opt.State()) t.push_back(kv);
    return ckpt.Save(s, {{"gates", t}}, step);
  };

  Replicas* replicas = plan.replicas && plan.replicas->size() > 1 ? plan.replicas : nullptr;
  if (replicas) {
    if (&replicas->teacher(0) != &teacher || &replicas->branches(0) != &branches)
      return absl::InvalidArgumentError("gate optimisation: the replicas are not of this teacher and branches");
    replicas->SyncBranches();
  }

  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return resumed_seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  int64_t run_tokens = 0;
  for (int64_t step = start; step < plan.steps; ++step) {
    if (sink.CancelRequested()) {
      report.seconds = elapsed();
      FM_RETURN_IF_ERROR(save(step));
      return absl::CancelledError(StrCat("gate optimisation cancelled at step ", step));
    }
    std::vector<MaskedSample> step_samples;
    for (int64_t i = 0; i < plan.samples_per_step; ++i) {
      FM_ASSIGN_OR_RETURN(MaskedSample s, samples(step * plan.samples_per_step + i));
      step_samples.push_back(std::move(s));
    }
    const double lr = CosineLr(step, plan.steps, plan.lr_start, plan.lr_end, plan.warmup_steps);
    FM_ASSIGN_OR_RETURN(GateStepResult r,
                        replicas ? ParallelGateOptimizationStep(*replicas, plan, step_samples, lr, gate_state)
                                 : GateOptimizationStep(teacher, branches, plan, step_samples, lr, gate_state));
    report.tokens += r.tokens;
    run_tokens += r.tokens;
    report.distance = r.distance;
    report.penalty = r.penalty;
    std::vector<double> g = ToVector(gates);
    if (plan.history_every > 0 && (step + 1) % plan.history_every == 0) report.history.push_back(g);
    ProgressEvent ev{Stage::kSelection, "gates", step + 1, plan.steps, 0, 0, {}, g, ""};
    ev.elapsed_seconds = elapsed();
    const double run_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ev.tokens_per_second = run_seconds > 0 ? static_cast<double>(run_tokens) / run_seconds : 0;
    ev.metrics = {{"loss", r.distance + r.penalty}, {"distance", r.distance}, {"penalty", r.penalty}, {"lr", lr}};
    sink.OnProgress(ev);
    if (plan.checkpoint_every > 0 && (step + 1) % plan.checkpoint_every == 0 && step + 1 < plan.steps) {
      report.seconds = elapsed();
      FM_RETURN_IF_ERROR(save(step + 1));
    }
  }
  report.gates = ToVector(gates);
  report.steps = plan.steps;
  report.seconds = elapsed();
  if (!state || !(*state).value("done", false)) FM_RETURN_IF_ERROR(save(plan.steps));
  return report;
}

}  // namespace fm
