// Every setting of a conversion job, torch-free so the worker agent (gRPC side) and the CLI can fill it in. The
// defaults follow the paper where they are stated (DESIGN.md §1); ScaleToModel() fills the settings left at 0 with
// values sized to the model and the device, so the demo model converts in minutes on a CPU.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fm {

enum class BranchKind { kLightning, kGla, kGatedDeltaNet };
std::string_view BranchKindName(BranchKind k);  // "lightning", "gla", "gated_deltanet"
absl::StatusOr<BranchKind> ParseBranchKind(std::string_view name);

enum class SelectionMethod { kFlashMorph, kUniform, kNll, kHead };
std::string_view SelectionMethodName(SelectionMethod m);  // "flashmorph", "uniform", "nll", "head"
absl::StatusOr<SelectionMethod> ParseSelectionMethod(std::string_view name);

// How many attention units keep softmax attention: layers (count or ratio of L) or heads (head-level method).
struct Budget {
  enum class Unit { kLayers, kRatio, kHeads };
  Unit unit = Unit::kRatio;
  double value = 0.25;
  std::string ToString() const;  // "4 layers", "ratio 0.25", "32 heads"
};
// Parses "4", "0.25", "25%", "32h" (heads).
absl::StatusOr<Budget> ParseBudget(std::string_view text);

enum class TextSourceKind { kBundled, kJsonl, kTokensU16, kTokensU32 };

struct DataSettings {
  TextSourceKind kind = TextSourceKind::kBundled;
  std::string path;                 // JSONL or token file; empty for the bundled Brown Corpus
  std::string text_field = "text";  // JSONL field
};

struct CalibrationSettings {
  int64_t train_tokens = 0;         // per layer; 0 = scaled
  double learning_rate = 0;         // 0 = scaled (3e-3 for short CPU budgets, 1e-3 otherwise)
  int64_t sequence_length = 0;      // 0 = scaled
  int64_t batch_sequences = 0;      // 0 = scaled
  int64_t eval_sequences = 4;       // held-out windows for the before/after alignment error
};

struct GateSettings {
  int64_t train_tokens = 0;  // 0 = scaled (paper: 20M)
  double learning_rate_start = 0;  // 0 = scaled: the paper's 2e-2 -> 2e-3; 5e-2 -> 5e-3 for short CPU budgets
  double learning_rate_end = 0;
  double sparsity_lambda = 0.1;
  int64_t min_context = 0, max_context = 0;  // 0 = scaled (paper: 1K..16K)
  int64_t passkeys_per_sample = 0;           // 0 = scaled (paper: 10)
  int64_t words_per_passkey = 0;             // 0 = scaled (paper: 32)
  int64_t batch_sequences = 1;
  // Recompute layers in the backward pass (memory ~ one layer). Unset = on for GPUs and long contexts, off for
  // short CPU runs where the recomputation only costs time.
  std::optional<bool> activation_checkpointing;
};

struct NllSettings {
  enum class Ablation { kBranch, kSlidingWindow };
  Ablation ablation = Ablation::kBranch;
  int64_t sliding_window = 64;
  int64_t samples = 0;  // passkey samples scored per layer; 0 = scaled
};

struct PostTrainingSettings {
  int64_t distill_tokens = -1;       // -1 = scaled, 0 = skip
  int64_t long_context_tokens = -1;  // -1 = scaled, 0 = skip
  int64_t sequence_length = 0;       // distillation windows; 0 = scaled
  int64_t long_context_length = 0;   // 0 = the gate stage's max_context
  double learning_rate = 3e-4;
  bool train_all = false;  // false: branches only
};

struct EvaluationSettings {
  std::vector<int64_t> needle_lengths;  // empty = scaled
  int64_t needle_samples = 0;           // per length; 0 = scaled
  int64_t held_out_tokens = 0;          // 0 = scaled
  bool enabled = true;
};

struct ConversionOptions {
  std::string model_path;  // HF directory or .gguf
  std::string output_dir;  // the exported Hugging Face directory (written beside, then swapped in atomically)
  std::string work_dir;    // stage checkpoints (resume); default <output_dir>.work
  SelectionMethod method = SelectionMethod::kFlashMorph;
  std::vector<Budget> budgets = {Budget{}};  // the first one is exported; every one gets a layout
  BranchKind branch = BranchKind::kGatedDeltaNet;
  uint64_t seed = 0;
  // "cpu", "cuda", "cuda:1", or several devices: "cuda:0,cuda:1" / "cuda:all" — then gate optimisation is data
  // parallel and calibration layer-parallel over full replicas of the model, or, with shard_layers, the model's
  // layers are split over the devices (for models that do not fit one; every stage runs on the sharded model).
  std::string device = "cpu";
  bool shard_layers = false;
  std::string dtype;           // compute dtype: "float32" (CPU default), "bfloat16" (CUDA default)
  std::string export_dtype = "bfloat16";
  int64_t max_shard_bytes = 5LL << 30;
  int64_t threads = 0;  // CPU threads; 0 = torch's default
  DataSettings data;
  CalibrationSettings calibration;
  GateSettings gates;
  NllSettings nll;
  PostTrainingSettings post_training;
  EvaluationSettings evaluation;
};

// What the model looks like to the scaler (filled from the model's config).
struct ModelShape {
  int64_t num_layers = 0, num_heads = 0, hidden_size = 0, max_position_embeddings = 0;
  int64_t parameters = 0;
};

// Fills every 0 / -1 / empty "scaled" setting. Small models on CPU get budgets that run in minutes.
void ScaleToModel(const ModelShape& shape, bool on_gpu, ConversionOptions& options);

// INVALID_ARGUMENT naming the field for inconsistent settings (call after ScaleToModel).
absl::Status ValidateConversionOptions(const ConversionOptions& options, const ModelShape& shape);

}  // namespace fm
