// Checks a ConversionSpec at CreateConversionJob and returns the job's copy with the server's defaults resolved.
// Promises: every malformed field is INVALID_ARGUMENT whose message starts with the field's path
// ("spec.budgets[1].full_attention_ratio: must be in (0, 1), got 1.5"); the model and data locations go through
// ModelRoots (their codes: INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED) and are replaced by their canonical
// paths; the model must be a checkpoint directory with a config.json (NOT_FOUND naming it if absent) or a .gguf
// file, whose configuration must parse (else its error, naming the file) and must fit every budget (a budget of
// all layers/heads or more is INVALID_ARGUMENT). Resolved defaults: selection_method FLASHMORPH, branch_kind
// GATED_DELTANET, post_training.trainable BRANCHES_ONLY, data bundled, data.jsonl.text_field "text", and a seed
// drawn from ctx.draw_seed when unset. Numeric stage settings left at 0 stay 0 (the engine sizes them);
// output.dtype unspecified stays unspecified (= the source dtype). The first problem found is reported.
#pragma once

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "flashmorph/v1/conversion_spec.pb.h"
#include "server/auth/model_roots.h"

namespace fm::server {

struct SpecContext {
  const ModelRoots* roots = nullptr;    // null: no roots (every path PERMISSION_DENIED)
  int max_priority = 100;               // the tenant's cap (TenantLimits::max_priority)
  absl::Time now = absl::Now();         // deadlines must be after this
  std::function<uint64_t()> draw_seed;  // draws the seed of a spec without one (null: a random device)
};

absl::StatusOr<flashmorph::v1::ConversionSpec> ValidateAndResolveSpec(const flashmorph::v1::ConversionSpec& spec,
                                                                      const SpecContext& ctx);

}  // namespace fm::server
