// The whole conversion, torch-free to its callers: load -> calibrate branches -> select (gates / NLL / uniform /
// head gates) -> discretise for every budget -> post-train the first budget's hybrid -> evaluate teacher and
// hybrid -> export. Every stage checkpoints under options.work_dir; calling RunConversion again with the same
// options resumes after the last completed step and produces the same layouts. Progress and cancellation go
// through the ProgressSink.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/morph/conversion_options.h"
#include "worker/engine/morph/layout.h"
#include "worker/engine/morph/progress.h"

namespace fm {

struct StageTiming {
  std::string stage;
  double seconds = 0;
  int64_t tokens = 0;
};

struct NeedleResult {
  int64_t length = 0;
  double teacher_recall = 0, hybrid_recall = 0;                  // passkeys fully recalled
  double teacher_token_accuracy = 0, hybrid_token_accuracy = 0;  // answer tokens predicted
};

struct EvaluationResult {
  std::vector<NeedleResult> needles;
  double teacher_ppl = 0, hybrid_ppl = 0, kl = 0;
  int64_t text_tokens = 0;
};

struct ConversionResult {
  std::vector<Layout> layouts;  // one per budget, in the order given; layouts[0] was exported
  std::vector<double> calibration_error_before, calibration_error_after;
  std::optional<EvaluationResult> evaluation;
  std::vector<StageTiming> timings;
  double selection_seconds = 0;  // the method's own selection cost (gates / NLL scoring; 0 for uniform)
  std::string output_dir;
  std::string report_json;  // conversion_layout.json as written
};

absl::StatusOr<ConversionResult> RunConversion(ConversionOptions options, ProgressSink* sink = nullptr);

}  // namespace fm
