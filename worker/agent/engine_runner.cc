// The only translation unit of flashmorph-worker that calls the engine (fm::RunConversion, fm_engine).
#include "worker/agent/local_engine_runner.h"

namespace fm::worker {
namespace {

class LocalEngineRunner final : public EngineRunner {
 public:
  absl::StatusOr<fm::ConversionResult> Run(const fm::ConversionOptions& options, fm::ProgressSink* sink) override {
    return fm::RunConversion(options, sink);
  }
};

}  // namespace

std::unique_ptr<EngineRunner> NewLocalEngineRunner() { return std::make_unique<LocalEngineRunner>(); }

}  // namespace fm::worker
