// The two translations between the API and the engine, torch-free: a job's ConversionSpec to the engine's
// fm::ConversionOptions, and the engine's fm::ConversionResult (layouts, evaluation, stage timings) to the API's
// ConversionResult. Proto zeros / unset optionals become the engine's "scaled" values (0, or -1 for post-training
// token counts), so the engine sizes them to the model and device. A spec the engine cannot run as written is
// INVALID_ARGUMENT (malformed) or UNIMPLEMENTED (valid, unsupported here), naming the field; both are user errors.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "flashmorph/v1/conversion_job.pb.h"
#include "flashmorph/v1/conversion_spec.pb.h"
#include "flashmorph/v1/layout.pb.h"
#include "worker/engine/morph/conversion_options.h"
#include "worker/engine/morph/layout.h"
#include "worker/engine/morph/progress.h"
#include "worker/engine/pipeline/conversion.h"

namespace fm::worker {

// Where this worker runs the engine.
struct DeviceChoice {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N"
  int64_t threads = 0;         // CPU threads; 0 = torch's default
};

// Maps every field of `spec` the engine consumes. Scheduling fields (priority, labels, deadline, resources) are the
// server's. model.source_sha256 is not an engine option: the agent checks it (source_checksum.h). The export dtype
// OutputOptions.DTYPE_UNSPECIFIED ("the source checkpoint's dtype") maps to the engine's default ("bfloat16"); the
// agent replaces it with the dtype the source's config declares when it can read one (ExportDtypeForSource with
// model_facts.h). With method NLL, gates.train_tokens bounds the scored tokens: samples = train_tokens / mean sample
// length when gates.max_context_tokens is given, else the engine's scaled sample count.
absl::StatusOr<fm::ConversionOptions> OptionsFromSpec(const flashmorph::v1::ConversionSpec& spec,
                                                      const std::string& output_dir, const std::string& work_dir,
                                                      const DeviceChoice& device);

// The export dtype for "the source checkpoint's dtype": `torch_dtype` when the engine can write it ("bfloat16",
// "float16", "float32"), else "" (keep the engine's default).
std::string ExportDtypeForSource(std::string_view torch_dtype);

flashmorph::v1::ConversionJob::Stage StageToProto(fm::Stage stage);
// fm::StageTiming::stage names ("load", "calibration", "selection", ...); STAGE_UNSPECIFIED for an unknown name.
flashmorph::v1::ConversionJob::Stage StageNameToProto(std::string_view name);

flashmorph::v1::AttentionBudget BudgetToProto(const fm::Budget& budget);

// `requested`: the spec's budget this layout answers (copied as requested); null: derived from layout.budget.
flashmorph::v1::Layout LayoutToProto(const fm::Layout& layout, const flashmorph::v1::AttentionBudget* requested);

// A gate snapshot: per layer, or per head (layer-major) when heads_per_layer > 0.
flashmorph::v1::GateVector GateVectorToProto(int64_t step, const std::vector<double>& gates, int64_t heads_per_layer);

struct ResultContext {
  int32_t attempt = 0;         // StageTiming.attempt
  int64_t needle_samples = 0;  // samples per needle length that ran (0: unknown)
};

// layouts (budgets as the spec requested them), evaluation, stage timings, and source_sha256 / seed /
// engine_version from the run's conversion_layout.json (report_json). Artifact fields are the server's.
flashmorph::v1::ConversionResult ResultToProto(const fm::ConversionResult& result,
                                               const flashmorph::v1::ConversionSpec& spec, const ResultContext& ctx);

}  // namespace fm::worker
