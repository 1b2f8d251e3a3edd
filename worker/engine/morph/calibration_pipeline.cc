#include "worker/engine/morph/calibration_pipeline.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include "worker/engine/common/channel.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/model/decoder_placement.h"

namespace fm {
namespace {

struct Handoff {
  int64_t step = 0;
  at::Tensor x;  // residual stream entering the shard
};

struct ShardResult {
  int64_t step = 0;
  std::vector<std::pair<size_t, double>> losses;  // (index in `layers`, loss)
};

}  // namespace

int64_t CalibrationShards::ShardOf(int64_t layer) const {
  int64_t s = 0;
  while (s + 1 < size() && layer >= first_layer[s + 1]) ++s;
  return s;
}

absl::StatusOr<CalibrationShards> MakeCalibrationShards(std::vector<const Decoder*> teachers) {
  if (teachers.empty()) return absl::InvalidArgumentError("calibration shards: no teachers");
  const int64_t L = teachers.front()->config().num_layers;
  FM_ASSIGN_OR_RETURN(std::vector<int64_t> part_of, BalancedLayerSplit(L, static_cast<int64_t>(teachers.size())));
  CalibrationShards shards;
  shards.teachers = std::move(teachers);
  for (int64_t l = 0; l < L; ++l)
    if (l == 0 || part_of[l] != part_of[l - 1]) shards.first_layer.push_back(l);
  shards.first_layer.push_back(L);
  return shards;
}

absl::StatusOr<int64_t> RunCalibrationPipeline(const CalibrationShards& shards, std::vector<LinearBranch>& branches,
                                               const std::vector<int64_t>& layers,
                                               const std::vector<std::unique_ptr<AdamW>>& optimizers,
                                               const CalibrationPipelineSteps& steps) {
  const int64_t S = shards.size();
  for (int64_t l : layers)
    if (l < 0 || l >= static_cast<int64_t>(branches.size()) || l >= static_cast<int64_t>(optimizers.size()) ||
        !optimizers[l])
      return absl::InvalidArgumentError(StrCat("calibration pipeline: layer ", l, " has no branch or optimiser"));
  if (steps.first >= steps.end) return steps.first;

  std::vector<std::unique_ptr<Channel<Handoff>>> inbox(S);  // inbox[s]: residual streams for shard s > 0
  for (int64_t s = 1; s < S; ++s) inbox[s] = std::make_unique<Channel<Handoff>>(1);
  Channel<ShardResult> results(1 << 20);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> alive{S};
  std::mutex error_mu;
  absl::Status first_error;
  auto fail = [&](absl::Status st) {
    {
      std::lock_guard<std::mutex> lock(error_mu);
      if (first_error.ok()) first_error = std::move(st);
    }
    stop = true;
    for (auto& c : inbox)
      if (c) c->Close();  // wakes the neighbours: upstream pushes fail, downstream pops end
  };

  auto shard_main = [&](int64_t s) {
    const Decoder& teacher = *shards.teachers[s];
    const at::Device device = shards.device(s);
    std::vector<size_t> mine;  // indices into `layers` of this shard's trained layers
    for (size_t i = 0; i < layers.size(); ++i)
      if (shards.ShardOf(layers[i]) == s) mine.push_back(i);
    try {
      const c10::DeviceGuard guard(device);
      for (int64_t next = steps.first;;) {
        Handoff in;
        if (s == 0) {
          if (stop || next >= steps.end) break;
          absl::StatusOr<at::Tensor> ids = steps.batch(next);
          if (!ids.ok()) {
            fail(ids.status());
            break;
          }
          const at::NoGradGuard no_grad;
          in = {next++, teacher.Embed(ids->to(teacher.device())).to(device)};
        } else {
          std::optional<Handoff> h = inbox[s]->Pop();
          if (!h) break;
          in = std::move(*h);
          in.x = in.x.to(device);
        }
        // The teacher's layers of this shard (no grad), keeping the trained layers' inputs and targets.
        std::map<int64_t, std::pair<at::Tensor, at::Tensor>> acts;  // layer -> (normed input, attention output)
        {
          const at::NoGradGuard no_grad;
          RopeOnDevices rope(teacher.Rope(0, in.x.size(1)));
          at::Tensor x = in.x;
          for (int64_t l = shards.first_layer[s]; l < shards.first_layer[s + 1]; ++l) {
            at::Tensor attn, xn;
            x = teacher.Block(l, x, rope.On(device), nullptr, &attn, &xn);
            acts[l] = {xn, attn};
          }
          if (s + 1 < S && !inbox[s + 1]->Push({in.step, x})) break;  // hand on before training: overlap
        }
        ShardResult result{in.step, {}};
        const double lr = steps.lr(in.step);
        for (size_t i : mine) {
          const int64_t l = layers[i];
          const at::AutoGradMode grad_on(true);
          const auto& [xn, target] = acts[l];
          at::Tensor out = branches[l].Forward(xn);
          at::Tensor loss = (out.to(at::kFloat) - target.to(at::kFloat)).pow(2).mean();
          loss.backward();
          optimizers[l]->Step(lr);
          result.losses.emplace_back(i, loss.item<double>());
        }
        results.Push(std::move(result));
      }
    } catch (const c10::Error& e) {
      fail(absl::InternalError(
          StrCat("calibration shard ", s, " on ", device.str(), " failed: ", e.what_without_backtrace())));
    } catch (const std::exception& e) {
      fail(absl::InternalError(StrCat("calibration shard ", s, " on ", device.str(), " failed: ", e.what())));
    }
    if (s + 1 < S) inbox[s + 1]->Close();  // downstream finishes what it holds, then ends
    if (--alive == 0) results.Close();
  };

  std::vector<std::thread> threads;
  for (int64_t s = 0; s < S; ++s) threads.emplace_back(shard_main, s);
  std::map<int64_t, std::pair<int64_t, std::vector<double>>> pending;  // step -> (shards reported, losses)
  int64_t next_report = steps.first;
  while (std::optional<ShardResult> r = results.Pop()) {
    auto& [count, losses] = pending[r->step];
    if (losses.empty()) losses.assign(layers.size(), 0.0);
    for (const auto& [i, loss] : r->losses) losses[i] = loss;
    ++count;
    while (!pending.empty() && pending.begin()->first == next_report && pending.begin()->second.first == S) {
      bool go = true;
      {
        std::lock_guard<std::mutex> lock(error_mu);
        go = first_error.ok();
      }
      if (go && !steps.on_step(next_report, pending.begin()->second.second)) stop = true;
      pending.erase(pending.begin());
      ++next_report;
    }
  }
  for (std::thread& t : threads) t.join();
  FM_RETURN_IF_ERROR(first_error);
  return next_report;
}

}  // namespace fm
