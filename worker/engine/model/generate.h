// Greedy decoding with a KV cache: the prompt is prefilled in one forward pass, then one token per step.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"

namespace fm {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  std::optional<int64_t> stop_token;  // generation ends after emitting it (it is included in the output)
};

// Returns prompt + generated ids for a single sequence.
absl::StatusOr<std::vector<int64_t>> GenerateGreedy(const Decoder& model, const std::vector<int64_t>& prompt,
                                                    const GenerateOptions& options);

}  // namespace fm
