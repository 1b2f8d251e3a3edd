// What hardware this process may use, for the worker's registration: GPUs (name, memory), CPU cores (this process's
// affinity), host memory (physical memory, capped by a cgroup limit) and the CUDA runtime version. Torch-free
// header; the implementation asks LibTorch / the CUDA runtime. A CPU-only build or machine reports no GPUs and an
// empty cuda_version. Never fails: what cannot be read is reported as 0 / empty.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fm {

struct GpuInfo {
  std::string name;          // as the driver reports it, e.g. "NVIDIA H200"
  int64_t memory_bytes = 0;  // total memory of the device
};

struct DeviceInventory {
  std::vector<GpuInfo> gpus;
  int cpu_count = 0;
  int64_t host_memory_bytes = 0;
  std::string cuda_version;  // CUDA runtime, e.g. "13.0"; empty without CUDA
};

DeviceInventory QueryDevices();

}  // namespace fm
