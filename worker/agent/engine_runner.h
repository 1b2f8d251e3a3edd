// The agent's view of the engine: one call that runs a conversion with progress and cancellation through a
// ProgressSink. Torch-free, so the gRPC side never includes LibTorch; flashmorph-worker plugs in the real engine
// (local_engine_runner.h), tests a fake one.
#pragma once

#include "absl/status/statusor.h"
#include "worker/engine/morph/conversion_options.h"
#include "worker/engine/morph/progress.h"
#include "worker/engine/pipeline/conversion.h"

namespace fm::worker {

class EngineRunner {
 public:
  virtual ~EngineRunner() = default;
  // Runs one conversion to the end, or until sink->CancelRequested() (then CANCELLED, checkpoints kept). The agent
  // calls it from one thread at a time.
  virtual absl::StatusOr<fm::ConversionResult> Run(const fm::ConversionOptions& options, fm::ProgressSink* sink) = 0;
};

}  // namespace fm::worker
