// The real engine behind the EngineRunner interface: fm::RunConversion in this process. Defined in
// engine_runner.cc, the only translation unit of flashmorph-worker that calls into the LibTorch engine.
#pragma once

#include <memory>

#include "worker/agent/engine_runner.h"

namespace fm::worker {

std::unique_ptr<EngineRunner> NewLocalEngineRunner();

}  // namespace fm::worker
