#include "worker/engine/morph/layout.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"

namespace fm {

std::string_view LayerTypeName(LayerType t) {
  switch (t) {
    case LayerType::kFullAttention: return "full_attention";
    case LayerType::kLinearAttention: return "linear_attention";
    case LayerType::kHybridAttention: return "hybrid_attention";
  }
  return "?";
}

std::vector<std::vector<int64_t>> Layout::FullAttentionHeads() const {
  std::vector<std::vector<int64_t>> heads(num_layers);
  for (int64_t u : kept) {
    if (head_level) {
      heads[u / num_heads].push_back(u % num_heads);
    } else {
      for (int64_t h = 0; h < num_heads; ++h) heads[u].push_back(h);
    }
  }
  return heads;
}

std::vector<LayerType> Layout::LayerTypes() const {
  std::vector<LayerType> types;
  for (const auto& h : FullAttentionHeads()) {
    types.push_back(h.empty() ? LayerType::kLinearAttention
                              : static_cast<int64_t>(h.size()) == num_heads ? LayerType::kFullAttention
                                                                            : LayerType::kHybridAttention);
  }
  return types;
}

std::vector<float> Layout::Mask() const {
  std::vector<float> m(num_layers * (head_level ? num_heads : 1), 0.f);
  for (int64_t u : kept) m[u] = 1.f;
  return m;
}

std::string Layout::Summary() const {
  std::string s = head_level ? "FA heads " : "FA layers ";
  for (size_t i = 0; i < kept.size(); ++i) {
    if (i) s += ",";
    s += head_level ? StrCat(kept[i] / num_heads, ".", kept[i] % num_heads) : std::to_string(kept[i]);
  }
  return StrCat(s, " of ", head_level ? num_layers * num_heads : num_layers, " (", method, ", ", budget.ToString(),
                ")");
}

absl::StatusOr<int64_t> ResolveBudget(const Budget& b, int64_t num_layers, int64_t num_heads) {
  int64_t k = 0, limit = num_layers;
  switch (b.unit) {
    case Budget::Unit::kLayers: k = static_cast<int64_t>(b.value); break;
    case Budget::Unit::kRatio:
      k = std::max<int64_t>(1, static_cast<int64_t>(std::llround(b.value * static_cast<double>(num_layers))));
      break;
    case Budget::Unit::kHeads:
      k = static_cast<int64_t>(b.value);
      limit = num_layers * num_heads;
      break;
  }
  if (k < 1 || k > limit)
    return absl::InvalidArgumentError(StrCat("budget ", b.ToString(), " gives ", k, " units; the model has ", limit));
  return k;
}

absl::StatusOr<Layout> SelectTopK(const std::vector<double>& scores, const Budget& budget, int64_t num_layers,
                                  int64_t num_heads, bool head_level, std::string method) {
  const int64_t n = head_level ? num_layers * num_heads : num_layers;
  if (static_cast<int64_t>(scores.size()) != n)
    return absl::InvalidArgumentError(StrCat("SelectTopK: ", scores.size(), " scores for ", n, " units"));
  for (double s : scores)
    if (!std::isfinite(s)) return absl::InvalidArgumentError("SelectTopK: a score is not finite");
  if (head_level != (budget.unit == Budget::Unit::kHeads))
    return absl::InvalidArgumentError(StrCat("budget ", budget.ToString(), " does not match a ",
                                             head_level ? "head" : "layer", "-level selection"));
  FM_ASSIGN_OR_RETURN(int64_t k, ResolveBudget(budget, num_layers, num_heads));
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  Layout out;
  out.budget = budget;
  out.method = std::move(method);
  out.num_layers = num_layers;
  out.num_heads = num_heads;
  out.head_level = head_level;
  out.kept_units = k;
  out.scores = scores;
  out.kept.assign(order.begin(), order.begin() + k);
  std::sort(out.kept.begin(), out.kept.end());
  if (k < n) out.margin = scores[order[k - 1]] - scores[order[k]];
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = k; j < n; ++j) {
      const double gap = scores[order[i]] - scores[order[j]];
      if (gap < kNearTieThreshold) out.near_ties.push_back({order[i], order[j], gap});
    }
  return out;
}

absl::StatusOr<Layout> UniformLayout(const Budget& budget, int64_t num_layers, int64_t num_heads) {
  if (budget.unit == Budget::Unit::kHeads)
    return absl::InvalidArgumentError("the uniform method takes a budget in layers or a ratio");
  FM_ASSIGN_OR_RETURN(int64_t k, ResolveBudget(budget, num_layers, num_heads));
  Layout out;
  out.budget = budget;
  out.method = "uniform";
  out.num_layers = num_layers;
  out.num_heads = num_heads;
  out.kept_units = k;
  for (int64_t i = 0; i < k; ++i) out.kept.push_back((i + 1) * num_layers / k - 1);
  return out;
}

}  // namespace fm
