// Registers the linear-attention ops with PyTorch's dispatcher as `torch.ops.flashmorph.*`, so Python benchmarks and
// checks (bench/kernel_bench.py) call the same code as the engine: load with
// torch.ops.load_library("<build>/kernels/libflashmorph_torch_ops.so"). Autograd flows through the C++ autograd
// functions (CompositeImplicitAutograd).
//   gla(q, k, v, g, initial_state?) -> (o, final_state)            [B, H, T, D] layout, q pre-scaled
//   gdn(q, k, v, g, beta, initial_state?) -> (o, final_state)
//   gla_reference / gdn_reference: the ATen references (any device, dtype)
//   gla_recurrent / gdn_recurrent: token-by-token (decoding) on the GPU
//   gate_mix(full, linear, a, heads) -> [.., 2 * H * D]
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "kernels/linear_attention.h"
#include "kernels/linear_attention_cuda.h"

namespace fm::kernels {
namespace {

using Pair = std::tuple<at::Tensor, at::Tensor>;

at::Tensor Or(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }
Pair AsPair(const LinearAttentionResult& r) { return {r.output, r.final_state}; }

Pair Gla(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
         const std::optional<at::Tensor>& s) {
  return AsPair(GatedLinearAttentionChunked(q, k, v, g, Or(s)));
}
Pair Gdn(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
         const std::optional<at::Tensor>& s) {
  return AsPair(GatedDeltaRuleChunked(q, k, v, g, beta, Or(s)));
}
Pair GlaReference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                  const std::optional<at::Tensor>& s) {
  return AsPair(GatedLinearAttentionChunkedReference(q, k, v, g, Or(s)));
}
Pair GdnReference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                  const at::Tensor& beta, const std::optional<at::Tensor>& s) {
  return AsPair(GatedDeltaRuleChunkedReference(q, k, v, g, beta, Or(s)));
}
Pair GlaRecurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                  const std::optional<at::Tensor>& s) {
  return AsPair(GatedLinearAttentionRecurrent(q, k, v, g, Or(s)));
}
Pair GdnRecurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                  const at::Tensor& beta, const std::optional<at::Tensor>& s) {
  return AsPair(GatedDeltaRuleRecurrent(q, k, v, g, beta, Or(s)));
}
at::Tensor GateMix(const at::Tensor& full, const at::Tensor& linear, const at::Tensor& a, int64_t heads) {
  return GateMixCuda(full, linear, a, heads);
}

}  // namespace
}  // namespace fm::kernels

TORCH_LIBRARY(flashmorph, m) {
  m.def("gla(Tensor q, Tensor k, Tensor v, Tensor g, Tensor? initial_state=None) -> (Tensor, Tensor)");
  m.def("gdn(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? initial_state=None) -> (Tensor, Tensor)");
  m.def("gla_reference(Tensor q, Tensor k, Tensor v, Tensor g, Tensor? initial_state=None) -> (Tensor, Tensor)");
  m.def(
      "gdn_reference(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? initial_state=None) -> (Tensor, "
      "Tensor)");
  m.def("gla_recurrent(Tensor q, Tensor k, Tensor v, Tensor g, Tensor? initial_state=None) -> (Tensor, Tensor)");
  m.def(
      "gdn_recurrent(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? initial_state=None) -> (Tensor, "
      "Tensor)");
  m.def("gate_mix(Tensor full, Tensor linear, Tensor a, int heads) -> Tensor");
}

TORCH_LIBRARY_IMPL(flashmorph, CompositeImplicitAutograd, m) {
  m.impl("gla", &fm::kernels::Gla);
  m.impl("gdn", &fm::kernels::Gdn);
  m.impl("gla_reference", &fm::kernels::GlaReference);
  m.impl("gdn_reference", &fm::kernels::GdnReference);
  m.impl("gla_recurrent", &fm::kernels::GlaRecurrent);
  m.impl("gdn_recurrent", &fm::kernels::GdnRecurrent);
  m.impl("gate_mix", &fm::kernels::GateMix);
}
