// How the engine reports progress: a small callback interface, free of torch and gRPC, that the worker agent maps
// onto heartbeats / job events, the CLI onto progress bars, and tests onto assertions. CancelRequested() is polled
// between steps; a cancelled run stops at the next step boundary with CANCELLED after writing its checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace fm {

enum class Stage { kLoad, kCalibration, kSelection, kDiscretization, kPostTraining, kEvaluation, kExport };
std::string_view StageName(Stage s);  // "load", "calibration", "selection", ...

struct ProgressEvent {
  Stage stage = Stage::kLoad;
  std::string phase;            // sub-step within the stage, e.g. "gates", "nll", "distill", "long_context"
  int64_t step = 0, total_steps = 0;
  double tokens_per_second = 0;
  double elapsed_seconds = 0;   // in this stage (phase)
  std::vector<std::pair<std::string, double>> metrics;  // loss terms etc.
  std::vector<double> gates;    // the whole gate vector (selection stage), L or L*H values
  std::string message;          // human-readable line for stage boundaries and results
};

class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual void OnProgress(const ProgressEvent& event) = 0;
  virtual bool CancelRequested() { return false; }
};

// Discards everything (the default when no sink is given).
class NullProgressSink final : public ProgressSink {
 public:
  void OnProgress(const ProgressEvent&) override {}
};

}  // namespace fm
