#include "bench/step_profile.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <vector>

#include "bench/bench_model.h"

namespace fm::bench {

std::string ProfileStep(const at::Device& device, const std::function<void()>& fn, int top) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  using torch::profiler::impl::ProfilerState;
  if (!device.is_cuda()) return "profile: CUDA devices only\n";
  const torch::profiler::impl::ProfilerConfig config(ProfilerState::KINETO);
  const std::set<ActivityType> activities = {ActivityType::CPU, ActivityType::CUDA};
  prof::prepareProfiler(config, activities);
  Sync(device);
  prof::enableProfiler(config, activities);
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  Sync(device);
  const double wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();

  struct Total {
    double ms = 0;
    int64_t count = 0;
  };
  std::map<std::string, Total> by_name;
  double busy_ms = 0;
  for (const prof::KinetoEvent& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    const double ms = static_cast<double>(e.durationNs()) / 1e6;
    Total& t = by_name[e.name()];
    t.ms += ms;
    ++t.count;
    busy_ms += ms;
  }
  std::vector<std::pair<std::string, Total>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  std::string out;
  char line[512];
  std::snprintf(line, sizeof(line),
                "profile: wall %.1f ms, GPU busy %.1f ms (%.0f%%; device events summed), %zu kernel names\n", wall_ms,
                busy_ms, wall_ms > 0 ? 100 * busy_ms / wall_ms : 0.0, rows.size());
  out += line;
  std::snprintf(line, sizeof(line), "  %9s %6s %7s  %s\n", "ms", "%busy", "calls", "kernel");
  out += line;
  for (int i = 0; i < top && i < static_cast<int>(rows.size()); ++i) {
    std::string name = rows[i].first;
    if (name.size() > 110) name = name.substr(0, 107) + "...";
    std::snprintf(line, sizeof(line), "  %9.2f %5.1f%% %7lld  %s\n", rows[i].second.ms,
                  busy_ms > 0 ? 100 * rows[i].second.ms / busy_ms : 0.0, static_cast<long long>(rows[i].second.count),
                  name.c_str());
    out += line;
  }
  return out;
}

}  // namespace fm::bench
