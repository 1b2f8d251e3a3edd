// Where one engine step spends its GPU time (bench only): runs a function once under LibTorch's Kineto profiler
// (CPU + CUDA activities) and summarises the device-side events — total busy time against the step's wall time
// (the gap is launch / synchronisation overhead) and the top kernels by time, grouped by name.
#pragma once

#include <functional>
#include <string>

#include <ATen/core/Tensor.h>

namespace fm::bench {

// `fn` runs once, between device synchronisations. Returns a printable table (or why there is none).
std::string ProfileStep(const at::Device& device, const std::function<void()>& fn, int top = 25);

}  // namespace fm::bench
