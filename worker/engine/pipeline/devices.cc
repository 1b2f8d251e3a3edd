#include "worker/engine/pipeline/devices.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <thread>

#ifdef FLASHMORPH_CUDA
#include <ATen/Context.h>
#include <cuda_runtime_api.h>
#endif

namespace fm {
namespace {

int CpuCount() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int64_t HostMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  int64_t bytes = pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
  // A container's memory limit (cgroup v2, then v1) when it is lower.
  for (const char* path : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(path);
    std::string text;
    if (!(in >> text) || text == "max") continue;
    try {
      const int64_t limit = std::stoll(text);
      if (limit > 0 && (bytes == 0 || limit < bytes)) bytes = limit;
    } catch (...) {
    }
  }
  return bytes;
}

}  // namespace

DeviceInventory QueryDevices() {
  DeviceInventory inv;
  inv.cpu_count = CpuCount();
  inv.host_memory_bytes = HostMemoryBytes();
#ifdef FLASHMORPH_CUDA
  if (at::hasCUDA()) {
    int count = 0;
    if (cudaGetDeviceCount(&count) == cudaSuccess) {
      for (int i = 0; i < count; ++i) {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
        inv.gpus.push_back({prop.name, static_cast<int64_t>(prop.totalGlobalMem)});
      }
    }
    int version = 0;
    if (cudaRuntimeGetVersion(&version) == cudaSuccess && version > 0)
      inv.cuda_version = std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
  }
#endif  // a CPU-only build (no libtorch_cuda linked) has no GPUs to offer
  return inv;
}

}  // namespace fm
