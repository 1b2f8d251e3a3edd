// Which attention units keep softmax attention: the discretisation of gate values (stage 3), the uniform peer and
// the ranking used by the NLL peer, all torch-free. Ties are broken toward the lower index, so equal scores give
// equal layouts on every machine.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/morph/conversion_options.h"

namespace fm {

enum class LayerType { kFullAttention, kLinearAttention, kHybridAttention };
std::string_view LayerTypeName(LayerType t);  // "full_attention", "linear_attention", "hybrid_attention"

struct NearTie {
  int64_t kept, dropped;  // unit indices (layer, or layer*H + head) on either side of the cut
  double gap;             // score(kept) - score(dropped)
};

struct Layout {
  Budget budget;
  std::string method;         // SelectionMethodName
  int64_t num_layers = 0, num_heads = 0;
  bool head_level = false;
  int64_t kept_units = 0;                      // K: layers, or heads when head_level
  std::vector<int64_t> kept;                   // sorted unit indices
  std::vector<double> scores;                  // per unit (gate values, NLL rises, ...); empty for uniform
  std::optional<double> margin;                // score of the K-th kept minus the best dropped (absent if none)
  std::vector<NearTie> near_ties;              // pairs across the cut closer than the tie threshold

  std::vector<LayerType> LayerTypes() const;
  // Per layer, the heads that keep softmax attention (all H for a full layer, none for a linear one).
  std::vector<std::vector<int64_t>> FullAttentionHeads() const;
  // 1 for kept units, 0 otherwise; [num_layers * (head_level ? num_heads : 1)].
  std::vector<float> Mask() const;
  std::string Summary() const;  // e.g. "FA layers 3,7 of 8 (flashmorph, ratio 0.25)"
};

inline constexpr double kNearTieThreshold = 0.02;

// K for `budget` over `num_layers` layers (ratio: round(r*L), at least 1). INVALID_ARGUMENT if out of range.
absl::StatusOr<int64_t> ResolveBudget(const Budget& budget, int64_t num_layers, int64_t num_heads);

// Top-K units by score (descending; ties -> lower index). `scores` has L or L*H entries (head_level).
absl::StatusOr<Layout> SelectTopK(const std::vector<double>& scores, const Budget& budget, int64_t num_layers,
                                  int64_t num_heads, bool head_level, std::string method);

// K layers spread evenly: layer floor((i+1)*L/K) - 1 for i = 0..K-1 (the last layer is always kept).
absl::StatusOr<Layout> UniformLayout(const Budget& budget, int64_t num_layers, int64_t num_heads);

}  // namespace fm
