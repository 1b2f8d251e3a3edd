#include "worker/engine/model/generate.h"

#include <ATen/ATen.h>

#include "worker/engine/common/status_macros.h"

namespace fm {

absl::StatusOr<std::vector<int64_t>> GenerateGreedy(const Decoder& model, const std::vector<int64_t>& prompt,
                                                    const GenerateOptions& options) {
  if (prompt.empty()) return absl::InvalidArgumentError("GenerateGreedy: empty prompt");
  std::vector<int64_t> out = prompt;
  KvCache cache;
  ForwardOptions fwd;
  fwd.cache = &cache;
  fwd.logits_last_only = true;
  at::Tensor next = at::tensor(prompt, at::kLong).unsqueeze(0);
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    FM_ASSIGN_OR_RETURN(ForwardResult r, model.Forward(next, fwd));
    const int64_t token = r.logits.select(1, 0).argmax(-1).item<int64_t>();
    out.push_back(token);
    if (options.stop_token && token == *options.stop_token) break;
    next = at::full({1, 1}, token, at::kLong);
  }
  return out;
}

}  // namespace fm
