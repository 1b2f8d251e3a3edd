#include "worker/engine/morph/replicas.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "worker/engine/common/channel.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/model/decoder_placement.h"

namespace fm {

// A persistent thread with one replica's device current, running the tasks it is given in order.
struct Replicas::Worker {
  explicit Worker(const at::Device& device)
      : tasks(1), thread([this, device] {
          const c10::DeviceGuard guard(device);
          while (std::optional<std::function<void()>> task = tasks.Pop()) (*task)();
        }) {}
  ~Worker() {
    tasks.Close();
    thread.join();
  }
  Channel<std::function<void()>> tasks;
  std::thread thread;
};

Replicas::~Replicas() = default;

void Replicas::ParallelFor(int64_t count, const std::function<void(int64_t)>& fn) {
  count = std::min(count, size());
  std::mutex mu;
  std::condition_variable done_cv;
  int64_t pending = count - 1;
  for (int64_t r = 1; r < count; ++r)
    workers_[r - 1]->tasks.Push([&, r] {
      fn(r);
      std::lock_guard<std::mutex> lock(mu);
      if (--pending == 0) done_cv.notify_all();
    });
  if (count > 0) fn(0);
  std::unique_lock<std::mutex> lock(mu);
  done_cv.wait(lock, [&] { return pending <= 0; });
}

absl::StatusOr<std::unique_ptr<Replicas>> Replicas::Create(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                                           const std::vector<at::Device>& devices) {
  if (devices.empty()) return absl::InvalidArgumentError("replicas: no devices");
  if (devices.front() != teacher.device())
    return absl::InvalidArgumentError(StrCat("replicas: the first device (", devices.front().str(),
                                             ") must be the teacher's (", teacher.device().str(), ")"));
  std::unique_ptr<Replicas> r(new Replicas());
  r->devices_ = devices;
  r->teacher_ = &teacher;
  r->branches_ = &branches;
  for (size_t i = 1; i < devices.size(); ++i) {
    FM_ASSIGN_OR_RETURN(std::unique_ptr<Decoder> copy, ReplicateDecoder(teacher, devices[i]));
    r->copies_.push_back(std::move(copy));
    try {
      std::vector<LinearBranch> bs = branches;
      for (LinearBranch& b : bs) b.To(teacher.dtype(), devices[i]);
      r->branch_copies_.push_back(std::move(bs));
    } catch (const c10::Error& e) {
      return absl::InternalError(
          StrCat("copying the branches to ", devices[i].str(), " failed: ", e.what_without_backtrace()));
    }
  }
  for (size_t i = 1; i < devices.size(); ++i) r->workers_.push_back(std::make_unique<Worker>(devices[i]));
  return r;
}

void Replicas::SyncBranches() {
  const at::NoGradGuard no_grad;
  for (auto& copy : branch_copies_)
    for (size_t l = 0; l < copy.size(); ++l) {
      auto src = (*branches_)[l].NamedTensors();
      auto dst = copy[l].NamedTensors();
      for (size_t i = 0; i < src.size(); ++i)
        if (!dst[i].second->is_same(*src[i].second)) dst[i].second->copy_(*src[i].second);
    }
}

}  // namespace fm
