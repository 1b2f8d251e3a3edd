#include "server/spec/spec_validation.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/json_strict.h"
#include "worker/engine/gguf/gguf_file.h"
#include "worker/engine/model/gguf_model_spec.h"
#include "worker/engine/model/model_config.h"

namespace fm::server {
namespace {

using flashmorph::v1::AttentionBudget;
using flashmorph::v1::ConversionSpec;
using flashmorph::v1::DataSource;
using flashmorph::v1::OutputOptions;
using flashmorph::v1::PostTrainingSettings;

constexpr int kMaxBudgets = 16;
constexpr int kMaxNeedleLengths = 16;
constexpr int kMaxGateSamplesPerStep = 1024;
constexpr int kMaxLabels = 64;
constexpr size_t kMaxLabelBytes = 63;
constexpr size_t kMaxRevisionBytes = 256;
constexpr int kMaxGpus = 64;
constexpr int64_t kMinShardBytes = int64_t{1} << 20;
// google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
constexpr int64_t kMinTimestampSeconds = -62135596800;
constexpr int64_t kMaxTimestampSeconds = 253402300799;

absl::Status Invalid(std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(StrCat(field, ": ", what));
}

// Prefixes `field` to an error from a library that names only the file.
absl::Status WithField(std::string_view field, const absl::Status& s) {
  return absl::Status(s.code(), StrCat(field, ": ", std::string(s.message())));
}

absl::Status NonNegative(std::string_view field, int64_t v) {
  if (v < 0) return Invalid(field, StrCat("must be >= 0, got ", v));
  return absl::OkStatus();
}

absl::Status Rate(std::string_view field, double v) {
  if (!std::isfinite(v) || v < 0) return Invalid(field, StrCat("must be finite and >= 0, got ", v));
  return absl::OkStatus();
}

bool IsLowerHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// What the budgets are checked against, from the model's configuration.
struct ModelShape {
  int64_t layers = 0;
  int64_t heads_per_layer = 0;
};

// Reads the model's configuration: `<dir>/config.json` of a checkpoint directory or the metadata of a .gguf file.
absl::StatusOr<ModelShape> InspectModel(const std::string& path, const ModelRoots& roots) {
  constexpr std::string_view kField = "spec.model.uri";
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    return absl::NotFoundError(StrCat(kField, ": ", path, ": ", std::strerror(errno)));
  ModelConfig config;
  if (S_ISDIR(st.st_mode)) {
    const std::string config_path = path + "/config.json";
    if (::access(config_path.c_str(), F_OK) != 0)
      return absl::NotFoundError(StrCat(kField, ": ", config_path,
                                        " does not exist (the model must be a Hugging Face checkpoint "
                                        "directory with config.json, or a .gguf file)"));
    // config.json may itself be a symlink (Hugging Face cache layout): it must stay inside the roots too.
    FM_ASSIGN_OR_RETURN(std::string real_config, roots.Resolve(config_path, kField));
    if (::access(real_config.c_str(), R_OK) != 0)
      return absl::PermissionDeniedError(StrCat(kField, ": ", config_path, ": ", std::strerror(errno)));
    auto loaded = LoadModelConfig(real_config);
    if (!loaded.ok()) return WithField(kField, loaded.status());
    config = *std::move(loaded);
  } else if (S_ISREG(st.st_mode) && path.size() > 5 && path.ends_with(".gguf")) {
    if (::access(path.c_str(), R_OK) != 0)
      return absl::PermissionDeniedError(StrCat(kField, ": ", path, ": ", std::strerror(errno)));
    auto file = GgufFile::Open(path);
    if (!file.ok()) return WithField(kField, file.status());
    auto loaded = ModelConfigFromGguf(*file);
    if (!loaded.ok()) return WithField(kField, loaded.status());
    config = *std::move(loaded);
  } else {
    return Invalid(kField, StrCat(QuoteForMessage(path), " is neither a checkpoint directory nor a .gguf file"));
  }
  if (config.num_layers < 1 || config.num_heads < 1)
    return Invalid(kField, StrCat(path, ": the configuration has no layers or no heads"));
  return ModelShape{config.num_layers, config.num_heads};
}

absl::Status CheckBudgetSyntax(const AttentionBudget& b, std::string_view path,
                               ConversionSpec::SelectionMethod method) {
  const bool head = method == ConversionSpec::HEAD;
  switch (b.budget_case()) {
    case AttentionBudget::BUDGET_NOT_SET:
      return Invalid(path,
                     "exactly one of full_attention_layers, full_attention_ratio, full_attention_heads must be set");
    case AttentionBudget::kFullAttentionLayers: {
      std::string f = StrCat(path, ".full_attention_layers");
      if (head)
        return Invalid(f, "not allowed with selection_method HEAD (use full_attention_heads or full_attention_ratio)");
      if (b.full_attention_layers() < 1) return Invalid(f, StrCat("must be >= 1, got ", b.full_attention_layers()));
      return absl::OkStatus();
    }
    case AttentionBudget::kFullAttentionRatio: {
      double r = b.full_attention_ratio();
      if (!std::isfinite(r) || r <= 0 || r >= 1)
        return Invalid(StrCat(path, ".full_attention_ratio"), StrCat("must be in (0, 1), got ", r));
      return absl::OkStatus();
    }
    case AttentionBudget::kFullAttentionHeads: {
      std::string f = StrCat(path, ".full_attention_heads");
      if (!head)
        return Invalid(
            f, StrCat("only allowed with selection_method HEAD, not ", ConversionSpec::SelectionMethod_Name(method)));
      if (b.full_attention_heads() < 1) return Invalid(f, StrCat("must be >= 1, got ", b.full_attention_heads()));
      return absl::OkStatus();
    }
  }
  return Invalid(path, "unknown budget kind");
}

// The budget against the model: the count it resolves to must leave at least one layer (head) linear.
absl::Status CheckBudgetFits(const AttentionBudget& b, std::string_view path, ConversionSpec::SelectionMethod method,
                             const ModelShape& shape) {
  const bool head = method == ConversionSpec::HEAD;
  const int64_t units = head ? shape.layers * shape.heads_per_layer : shape.layers;
  const std::string_view unit_name = head ? "query heads" : "layers";
  switch (b.budget_case()) {
    case AttentionBudget::kFullAttentionLayers:
      if (b.full_attention_layers() >= units)
        return Invalid(StrCat(path, ".full_attention_layers"),
                       StrCat(b.full_attention_layers(), " of the model's ", units,
                              " layers is all of them or more; at least one layer must become linear"));
      return absl::OkStatus();
    case AttentionBudget::kFullAttentionHeads:
      if (b.full_attention_heads() >= units)
        return Invalid(StrCat(path, ".full_attention_heads"),
                       StrCat(b.full_attention_heads(), " of the model's ", units,
                              " query heads is all of them or more; at least one head must become linear"));
      return absl::OkStatus();
    case AttentionBudget::kFullAttentionRatio: {
      const double r = b.full_attention_ratio();
      const int64_t count = std::max<int64_t>(1, std::llround(r * static_cast<double>(units)));
      if (count >= units)
        return Invalid(StrCat(path, ".full_attention_ratio"),
                       StrCat(r, " of the model's ", units, " ", unit_name, " rounds to ", count,
                              ", all of them; at least one must become linear"));
      return absl::OkStatus();
    }
    case AttentionBudget::BUDGET_NOT_SET:
      break;
  }
  return absl::OkStatus();
}

absl::Status CheckLabels(const ConversionSpec& spec) {
  if (spec.labels_size() > kMaxLabels)
    return Invalid("spec.labels", StrCat("at most ", kMaxLabels, " labels, got ", spec.labels_size()));
  // Sorted, so the first bad label reported does not depend on the map's order.
  std::vector<std::string> keys;
  for (const auto& [k, v] : spec.labels()) keys.push_back(k);
  std::sort(keys.begin(), keys.end());
  for (const std::string& k : keys) {
    std::string field = StrCat("spec.labels[", QuoteForMessage(k), "]");
    bool ok = !k.empty() && k.size() <= kMaxLabelBytes && k[0] >= 'a' && k[0] <= 'z';
    for (char c : k) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-');
    if (!ok) return Invalid(field, "keys are 1-63 bytes of [a-z0-9_-] starting with a letter");
    const std::string& v = spec.labels().at(k);
    if (v.size() > kMaxLabelBytes)
      return Invalid(field, StrCat("values are at most ", kMaxLabelBytes, " bytes, got ", v.size()));
  }
  return absl::OkStatus();
}

absl::Status CheckStageSettings(const ConversionSpec& spec) {
  const auto& c = spec.calibration();
  FM_RETURN_IF_ERROR(NonNegative("spec.calibration.train_tokens", c.train_tokens()));
  FM_RETURN_IF_ERROR(Rate("spec.calibration.learning_rate", c.learning_rate()));
  FM_RETURN_IF_ERROR(NonNegative("spec.calibration.sequence_length_tokens", c.sequence_length_tokens()));
  FM_RETURN_IF_ERROR(NonNegative("spec.calibration.batch_sequences", c.batch_sequences()));

  const auto& g = spec.gates();
  FM_RETURN_IF_ERROR(NonNegative("spec.gates.train_tokens", g.train_tokens()));
  FM_RETURN_IF_ERROR(Rate("spec.gates.learning_rate_start", g.learning_rate_start()));
  FM_RETURN_IF_ERROR(Rate("spec.gates.learning_rate_end", g.learning_rate_end()));
  if (g.has_sparsity_lambda()) FM_RETURN_IF_ERROR(Rate("spec.gates.sparsity_lambda", g.sparsity_lambda()));
  FM_RETURN_IF_ERROR(NonNegative("spec.gates.min_context_tokens", g.min_context_tokens()));
  FM_RETURN_IF_ERROR(NonNegative("spec.gates.max_context_tokens", g.max_context_tokens()));
  if (g.min_context_tokens() > 0 && g.max_context_tokens() > 0 && g.min_context_tokens() > g.max_context_tokens())
    return Invalid("spec.gates.min_context_tokens",
                   StrCat(g.min_context_tokens(), " is above max_context_tokens ", g.max_context_tokens()));
  FM_RETURN_IF_ERROR(NonNegative("spec.gates.passkeys_per_sample", g.passkeys_per_sample()));
  FM_RETURN_IF_ERROR(NonNegative("spec.gates.samples_per_step", g.samples_per_step()));
  if (g.samples_per_step() > kMaxGateSamplesPerStep)
    return Invalid("spec.gates.samples_per_step",
                   StrCat("at most ", kMaxGateSamplesPerStep, ", got ", g.samples_per_step()));

  const auto& p = spec.post_training();
  if (p.has_distill_tokens()) FM_RETURN_IF_ERROR(NonNegative("spec.post_training.distill_tokens", p.distill_tokens()));
  if (p.has_long_context_tokens())
    FM_RETURN_IF_ERROR(NonNegative("spec.post_training.long_context_tokens", p.long_context_tokens()));
  FM_RETURN_IF_ERROR(NonNegative("spec.post_training.long_context_sequence_tokens", p.long_context_sequence_tokens()));
  FM_RETURN_IF_ERROR(Rate("spec.post_training.learning_rate", p.learning_rate()));
  if (!PostTrainingSettings::TrainableParams_IsValid(p.trainable()))
    return Invalid("spec.post_training.trainable", StrCat("unknown value ", static_cast<int>(p.trainable())));

  const auto& e = spec.evaluation();
  if (e.needle_context_tokens_size() > kMaxNeedleLengths)
    return Invalid("spec.evaluation.needle_context_tokens",
                   StrCat("at most ", kMaxNeedleLengths, " lengths, got ", e.needle_context_tokens_size()));
  for (int i = 0; i < e.needle_context_tokens_size(); ++i) {
    std::string f = StrCat("spec.evaluation.needle_context_tokens[", i, "]");
    int32_t n = e.needle_context_tokens(i);
    if (n <= 0) return Invalid(f, StrCat("must be > 0, got ", n));
    if (i > 0 && n <= e.needle_context_tokens(i - 1))
      return Invalid(f,
                     StrCat("lengths must be strictly ascending, got ", n, " after ", e.needle_context_tokens(i - 1)));
  }
  FM_RETURN_IF_ERROR(NonNegative("spec.evaluation.needle_samples_per_length", e.needle_samples_per_length()));
  if (e.has_held_out_tokens()) FM_RETURN_IF_ERROR(NonNegative("spec.evaluation.held_out_tokens", e.held_out_tokens()));

  const auto& o = spec.output();
  if (!OutputOptions::Dtype_IsValid(o.dtype()))
    return Invalid("spec.output.dtype", StrCat("unknown value ", static_cast<int>(o.dtype())));
  FM_RETURN_IF_ERROR(NonNegative("spec.output.max_shard_bytes", o.max_shard_bytes()));
  if (o.max_shard_bytes() > 0 && o.max_shard_bytes() < kMinShardBytes)
    return Invalid("spec.output.max_shard_bytes",
                   StrCat("must be 0 (default) or at least 1 MiB (", kMinShardBytes, "), got ", o.max_shard_bytes()));

  const auto& r = spec.resources();
  if (r.gpus() < 0 || r.gpus() > kMaxGpus)
    return Invalid("spec.resources.gpus", StrCat("must be in [0, ", kMaxGpus, "], got ", r.gpus()));
  FM_RETURN_IF_ERROR(NonNegative("spec.resources.min_gpu_memory_bytes", r.min_gpu_memory_bytes()));
  FM_RETURN_IF_ERROR(NonNegative("spec.resources.min_host_memory_bytes", r.min_host_memory_bytes()));
  return absl::OkStatus();
}

absl::Status CheckScheduling(const ConversionSpec& spec, const SpecContext& ctx) {
  if (spec.priority() < -100 || spec.priority() > 100)
    return Invalid("spec.priority", StrCat("must be in [-100, 100], got ", spec.priority()));
  if (spec.priority() > ctx.max_priority)
    return Invalid("spec.priority",
                   StrCat(spec.priority(), " is above the tenant's maximum priority ", ctx.max_priority));
  FM_RETURN_IF_ERROR(CheckLabels(spec));
  if (spec.has_deadline()) {
    const auto& d = spec.deadline();
    if (d.seconds() < kMinTimestampSeconds || d.seconds() > kMaxTimestampSeconds || d.nanos() < 0 ||
        d.nanos() > 999999999)
      return Invalid("spec.deadline",
                     StrCat("not a valid timestamp (seconds ", d.seconds(), ", nanos ", d.nanos(), ")"));
    absl::Time t = absl::FromUnixSeconds(d.seconds()) + absl::Nanoseconds(d.nanos());
    if (t <= ctx.now)
      return Invalid("spec.deadline", StrCat("must be in the future, got ", absl::FormatTime(t, absl::UTCTimeZone())));
  }
  return absl::OkStatus();
}

// A data file through the roots; it must be a regular file. Returns its canonical path.
absl::StatusOr<std::string> ResolveDataFile(std::string_view uri, std::string_view field, const ModelRoots& roots) {
  FM_ASSIGN_OR_RETURN(std::string path, roots.Resolve(uri, field));
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return absl::NotFoundError(StrCat(field, ": ", path, ": ", std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) return Invalid(field, StrCat(QuoteForMessage(path), " is not a regular file"));
  if (::access(path.c_str(), R_OK) != 0)
    return absl::PermissionDeniedError(StrCat(field, ": ", path, ": ", std::strerror(errno)));
  return path;
}

absl::Status ResolveData(ConversionSpec& spec, const ModelRoots& roots) {
  DataSource* data = spec.mutable_data();
  switch (data->source_case()) {
    case DataSource::SOURCE_NOT_SET:
      data->mutable_bundled();
      return absl::OkStatus();
    case DataSource::kBundled:
      return absl::OkStatus();
    case DataSource::kJsonl: {
      auto* j = data->mutable_jsonl();
      if (j->path().empty()) return Invalid("spec.data.jsonl.path", "required");
      if (!j->text_field().empty() && j->text_field() != "text")
        return Invalid("spec.data.jsonl.text_field",
                       StrCat("only the 'text' field is supported, got ", QuoteForMessage(j->text_field())));
      j->set_text_field("text");
      FM_ASSIGN_OR_RETURN(std::string path, ResolveDataFile(j->path(), "spec.data.jsonl.path", roots));
      j->set_path(path);
      return absl::OkStatus();
    }
    case DataSource::kTokenFile: {
      auto* t = data->mutable_token_file();
      if (t->path().empty()) return Invalid("spec.data.token_file.path", "required");
      if (t->dtype() == DataSource::TokenFile::TOKEN_DTYPE_UNSPECIFIED)
        return Invalid("spec.data.token_file.dtype", "required (UINT16 or UINT32)");
      if (!DataSource::TokenFile::TokenDtype_IsValid(t->dtype()))
        return Invalid("spec.data.token_file.dtype", StrCat("unknown value ", static_cast<int>(t->dtype())));
      FM_ASSIGN_OR_RETURN(std::string path, ResolveDataFile(t->path(), "spec.data.token_file.path", roots));
      t->set_path(path);
      return absl::OkStatus();
    }
  }
  return Invalid("spec.data", "unknown source");
}

uint64_t RandomSeed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

}  // namespace

absl::StatusOr<ConversionSpec> ValidateAndResolveSpec(const ConversionSpec& spec, const SpecContext& ctx) {
  static const ModelRoots kNoRoots;
  const ModelRoots& roots = ctx.roots != nullptr ? *ctx.roots : kNoRoots;
  ConversionSpec out = spec;

  // Model reference (syntax first; the filesystem comes after the cheap checks).
  if (spec.model().uri().empty()) return Invalid("spec.model.uri", "required");
  const std::string& sha = spec.model().source_sha256();
  if (!sha.empty() && (sha.size() != 64 || !IsLowerHex(sha)))
    return Invalid("spec.model.source_sha256", "must be empty or 64 lowercase hex digits");
  if (spec.model().revision().size() > kMaxRevisionBytes)
    return Invalid("spec.model.revision", StrCat("at most ", kMaxRevisionBytes, " bytes"));

  // Enums and their defaults.
  if (!ConversionSpec::SelectionMethod_IsValid(spec.selection_method()))
    return Invalid("spec.selection_method", StrCat("unknown value ", static_cast<int>(spec.selection_method())));
  if (!ConversionSpec::BranchKind_IsValid(spec.branch_kind()))
    return Invalid("spec.branch_kind", StrCat("unknown value ", static_cast<int>(spec.branch_kind())));
  if (out.selection_method() == ConversionSpec::SELECTION_METHOD_UNSPECIFIED)
    out.set_selection_method(ConversionSpec::FLASHMORPH);
  if (out.branch_kind() == ConversionSpec::BRANCH_KIND_UNSPECIFIED) out.set_branch_kind(ConversionSpec::GATED_DELTANET);
  if (out.post_training().trainable() == PostTrainingSettings::TRAINABLE_PARAMS_UNSPECIFIED &&
      PostTrainingSettings::TrainableParams_IsValid(out.post_training().trainable()))
    out.mutable_post_training()->set_trainable(PostTrainingSettings::BRANCHES_ONLY);
  const ConversionSpec::SelectionMethod method = out.selection_method();

  // Budgets, without the model.
  if (spec.budgets_size() < 1) return Invalid("spec.budgets", "at least one budget is required");
  if (spec.budgets_size() > kMaxBudgets)
    return Invalid("spec.budgets", StrCat("at most ", kMaxBudgets, " budgets, got ", spec.budgets_size()));
  for (int i = 0; i < spec.budgets_size(); ++i)
    FM_RETURN_IF_ERROR(CheckBudgetSyntax(spec.budgets(i), StrCat("spec.budgets[", i, "]"), method));

  FM_RETURN_IF_ERROR(CheckStageSettings(spec));
  FM_RETURN_IF_ERROR(CheckScheduling(spec, ctx));

  // The filesystem: model (and its configuration against the budgets), then data.
  FM_ASSIGN_OR_RETURN(std::string model_path, roots.Resolve(spec.model().uri(), "spec.model.uri"));
  out.mutable_model()->set_uri(model_path);
  FM_ASSIGN_OR_RETURN(ModelShape shape, InspectModel(model_path, roots));
  for (int i = 0; i < spec.budgets_size(); ++i)
    FM_RETURN_IF_ERROR(CheckBudgetFits(spec.budgets(i), StrCat("spec.budgets[", i, "]"), method, shape));
  FM_RETURN_IF_ERROR(ResolveData(out, roots));

  if (!out.has_seed()) out.set_seed(ctx.draw_seed ? ctx.draw_seed() : RandomSeed());
  return out;
}

}  // namespace fm::server
