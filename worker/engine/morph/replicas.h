// Copies of the frozen teacher and its branches on other devices: data-parallel gate optimisation runs on all of
// them; layer-parallel calibration uses the teacher copies, one shard per device.
// Replica 0 is the caller's own teacher and branches (nothing copied); replica r > 0 holds a copy of both on
// devices[r]. A replica on the caller's own device shares its tensors (no memory), which is also how the CPU tests
// run the multi-device code paths. Branch copies are refreshed from replica 0 by SyncBranches().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"
#include "worker/engine/morph/linear_branch.h"

namespace fm {

class Replicas {
 public:
  // INVALID_ARGUMENT for an empty device list or a first device other than the teacher's; INTERNAL when a copy
  // fails (out of memory on a device).
  static absl::StatusOr<std::unique_ptr<Replicas>> Create(const Decoder& teacher, std::vector<LinearBranch>& branches,
                                                          const std::vector<at::Device>& devices);

  int64_t size() const { return static_cast<int64_t>(devices_.size()); }
  const at::Device& device(int64_t r) const { return devices_[r]; }
  const Decoder& teacher(int64_t r) const { return r == 0 ? *teacher_ : *copies_[r - 1]; }
  std::vector<LinearBranch>& branches(int64_t r) { return r == 0 ? *branches_ : branch_copies_[r - 1]; }

  // Copies replica 0's branch values into the other replicas (after they changed, e.g. calibration).
  void SyncBranches();

  // Runs fn(r) for the first `count` replicas at once — replica 0 on the calling thread, replica r > 0 on its own
  // persistent thread with device(r) current — and returns when all have returned. fn must not throw.
  void ParallelFor(int64_t count, const std::function<void(int64_t r)>& fn);

  ~Replicas();

 private:
  Replicas() = default;
  struct Worker;
  std::vector<std::unique_ptr<Worker>> workers_;  // replicas 1..n-1
  std::vector<at::Device> devices_;
  const Decoder* teacher_ = nullptr;
  std::vector<LinearBranch>* branches_ = nullptr;
  std::vector<std::unique_ptr<Decoder>> copies_;
  std::vector<std::vector<LinearBranch>> branch_copies_;
};

}  // namespace fm
