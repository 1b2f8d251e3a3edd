// Stage 2: gate optimisation (docs/ENGINE.md §2, §4). Every weight is frozen; only the gates a_l (or a_{l,h} for
// the head-level method) train, on passkey samples: loss = mean over answer positions of the squared distance
// between the morphable model's final hidden state and the teacher's, per dimension, + λ·Σa (head-level: λ·Σa/H).
// AdamW, cosine LR from lr_start to lr_end, gates clamped to [0,1] after each step, activation checkpointing.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/morph/linear_branch.h"
#include "worker/engine/morph/optimizer.h"
#include "worker/engine/morph/progress.h"
#include "worker/engine/morph/replicas.h"

namespace fm {

// One passkey sample as tensors: ids [1, T] int64 and answer_mask [1, T] bool (true on answer tokens).
struct MaskedSample {
  at::Tensor ids, answer_mask;
};
using MaskedSampleFn = std::function<absl::StatusOr<MaskedSample>(int64_t index)>;

struct GatePlan {
  std::string fingerprint;  // settings that a resumed checkpoint must share (see StageCheckpoint)
  int64_t steps = 0;
  int64_t samples_per_step = 1;
  double lr_start = 2e-2, lr_end = 2e-3;
  int64_t warmup_steps = 0;
  double sparsity_lambda = 0.1;
  bool head_level = false;
  bool checkpointing = true;
  int64_t checkpoint_every = 50;
  int64_t history_every = 10;  // keep the gate vector every N steps in the report
  // Data parallelism (not owned; null or one replica: the teacher's device only): the step's samples are dealt
  // round-robin to these replicas of the teacher and branches, refreshed from the caller's branches first
  // (Replicas::SyncBranches). Not part of the fingerprint: a run may resume on another number of devices (the
  // result differs only by the order of float sums).
  Replicas* replicas = nullptr;
};

struct GateReport {
  std::vector<double> gates;                 // final values, L (or L*H, layer-major)
  std::vector<std::vector<double>> history;  // gate vectors every history_every steps
  double distance = 0, penalty = 0;          // loss terms of the last step
  int64_t steps = 0, tokens = 0;
  double seconds = 0;
};

// The trainable state of the stage: gates [L, 1] (or [L, H] for head-level), float32 on the teacher's device, init 1,
// requiring grad; and their AdamW (no gradient clipping: gates see small, well-scaled gradients; clipping would couple
// them).
struct GateState {
  GateState(const Decoder& teacher, bool head_level);
  at::Tensor gates;
  AdamW optimizer;
};

struct GateStepResult {
  double distance = 0;  // hidden-state term, averaged over the step's samples
  double penalty = 0;   // λ/G·Σa before the update
  int64_t tokens = 0;
  // Data-parallel steps: wall seconds of each replica's share (its forward/backward passes, which end in a
  // synchronising read of the loss), to see the balance; empty for the one-device step.
  std::vector<double> replica_seconds;
};

// One step of the stage, as OptimizeGates runs it (and bench/gateopt_bench.cc times it): per sample, the teacher's
// final hidden states at the answer-predicting positions (no grad), then the morphable model's forward + backward
// (activation checkpointing when plan.checkpointing) with loss weight 1/samples.size(); then the sparsity gradient
// λ/G, one AdamW update with learning rate `lr`, and the clamp to [0,1]. The branches must be frozen (OptimizeGates
// freezes them), else their gradients are computed too. INVALID_ARGUMENT for no samples or a sample without answer
// tokens.
absl::StatusOr<GateStepResult> GateOptimizationStep(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                                    const GatePlan& plan, const std::vector<MaskedSample>& samples,
                                                    double lr, GateState& state);

// The same step, data-parallel: sample i runs on replica i % replicas.size(), each replica in its own thread on its
// own device with its own copy of the gates; the gradients are summed onto state.gates (replica 0's device) before
// the sparsity term, the AdamW update and the clamp. Equal to GateOptimizationStep on the same samples up to the
// order of float sums. The replicas' teacher and branches must be frozen copies of the caller's (Replicas).
absl::StatusOr<GateStepResult> ParallelGateOptimizationStep(Replicas& replicas, const GatePlan& plan,
                                                            const std::vector<MaskedSample>& samples, double lr,
                                                            GateState& state);

// The hidden-state distance term on one sample (gates given; no grad): used by tests and the NLL peer.
absl::StatusOr<double> AnswerHiddenDistance(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                            const at::Tensor& gates, const MaskedSample& sample);

absl::StatusOr<GateReport> OptimizeGates(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                         const GatePlan& plan, const MaskedSampleFn& samples,
                                         const std::string& checkpoint_dir, ProgressSink& sink);

}  // namespace fm
