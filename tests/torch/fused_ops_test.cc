// The fused row ops (kernels/fused_ops.h, RMSNorm rows) against float64 evaluations of the same formulas: the ATen
// references on the CPU always (what CPU CI runs), and the CUDA kernels (kernels/fused_ops_cuda.h) on a GPU, forward
// and every gradient, at several head sizes, layouts (strided input, heads-first output), with and without each
// stage, on fresh random inputs (seed printed).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/fused_ops.h"
#include "kernels/rms_norm.h"
#include "tests/cuda_emu/emu_row_ops.h"
#include "tests/cuda_emu/emu_runtime.h"

#ifdef FLASHMORPH_CUDA
#include "kernels/fused_ops_cuda.h"
#endif

namespace fm {
namespace {

uint64_t FreshSeed() {
  const uint64_t seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  at::manual_seed(seed);
  return seed;
}

double RelErr(const at::Tensor& got, const at::Tensor& want) {
  at::Tensor g = got.detach().to(at::kCPU, at::kDouble), w = want.detach().to(at::kCPU, at::kDouble);
  return (g - w).norm().item<double>() / (w.norm().item<double>() + 1e-30);
}

bool AllFinite(const at::Tensor& t) { return at::isfinite(t.detach()).all().item<bool>(); }

// Gradients of sum(y * dy) with respect to the leaf tensors `inputs`.
std::vector<at::Tensor> Grads(const at::Tensor& y, const at::Tensor& dy, const std::vector<at::Tensor>& inputs) {
  for (const at::Tensor& t : inputs) t.mutable_grad() = at::Tensor();
  (y.to(at::kDouble) * dy.to(y.device(), at::kDouble)).sum().backward();
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : inputs) out.push_back(t.grad());
  return out;
}

// The spec's formula in float64 on [B, T, H, D] (differentiable; no intermediate roundings).
at::Tensor HeadTransformFloat64(const at::Tensor& x, const kernels::HeadTransformSpec& s, const at::Tensor& w) {
  at::Tensor y = x;
  if (w.defined() || s.unit_norm) {
    y = y * at::rsqrt(y.pow(2).mean(-1, true) + s.eps);
    if (w.defined()) y = y * w;
  }
  if (s.cos.defined()) {
    const int64_t T = y.size(1), D = y.size(3);
    y = kernels::RotaryReference(y, s.cos.to(at::kCPU, at::kDouble).view({T, 1, D}),
                                 s.sin.to(at::kCPU, at::kDouble).view({T, 1, D}));
  }
  if (s.silu) y = y * at::sigmoid(y);
  if (s.l2) y = y * at::rsqrt(y.pow(2).sum(-1, true) + 1e-6);
  y = y * s.scale;
  return s.heads_first ? y.transpose(1, 2) : y;
}

struct Case {
  std::string name;
  bool weight = false, unit = false, rope = false, silu = false, l2 = false, heads_first = false;
  double scale = 1.0;
  bool weight_grad = false, transposed_input = false;
  bool offset_input = false;  // rows start 8 bytes past a 16-byte boundary (the vectorized kernels fall back)
};

// The engine's uses: attention q/k (norm + rope, rope only), branch feature maps (Lightning, GDN, GLA), branch output
// norms (unit, weighted, from the kernels' [B, H, T, D] layout), plus every stage alone.
const std::vector<Case> kCases = {
    {"qk_norm_rope", true, false, true},
    {"rope_only", false, false, true},
    {"lightning_q", true, false, false, true, false, true, 0.088},
    {"gdn_k", true, false, false, true, true, true},
    {"gla_q", false, false, false, false, false, true, 0.125},
    {"unit_norm_from_heads_first", false, true, false, false, false, false, 1.0, false, true},
    {"weighted_norm_trains", true, false, false, false, false, false, 1.0, true, true},
    {"silu_only", false, false, false, true},
    {"l2_only", false, false, false, false, true},
    {"qk_norm_rope_offset_rows", true, false, true, false, false, false, 1.0, false, false, true},
};

at::Tensor RopeTable(int64_t T, int64_t D, bool cosine) {
  at::Tensor inv = 1.0 / at::pow(10000.0, at::arange(0, D, 2, at::kDouble) / static_cast<double>(D));
  at::Tensor ang = at::outer(at::arange(T, at::kDouble), inv);
  at::Tensor emb = at::cat({ang, ang}, -1);
  return cosine ? emb.cos() : emb.sin();
}

// A case's inputs (rounded once to `dtype`; the float64 side starts from the same values), its spec on `device`, and
// the float64 output and gradients for the output gradient dy.
struct CaseData {
  at::Tensor base, w_base, x, w, dy;
  kernels::HeadTransformSpec spec;
  at::Tensor y64, dx64, dw64;
};

CaseData MakeCase(const Case& c, int64_t B, int64_t T, int64_t H, int64_t D, at::ScalarType dtype,
                  const at::Device& device) {
  CaseData d;
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  d.base = (at::randn({B, T, H, D}, at::kDouble) * 2 + 0.3).to(dtype);
  d.w_base = (1 + 0.3 * at::randn({D}, at::kDouble)).to(dtype);
  at::Tensor x =
      c.transposed_input ? d.base.transpose(1, 2).contiguous().to(device).transpose(1, 2) : d.base.to(device);
  if (c.offset_input) x = at::cat({at::zeros({B, T, H, 4}, x.options()), x}, -1).narrow(-1, 4, D);
  d.x = x.detach().requires_grad_(true);
  d.spec.eps = 1e-6;
  d.spec.unit_norm = c.unit;
  d.spec.silu = c.silu;
  d.spec.l2 = c.l2;
  d.spec.scale = c.scale;
  d.spec.heads_first = c.heads_first;
  if (c.weight) {
    d.w = d.w_base.to(device).detach().requires_grad_(c.weight_grad);
    d.spec.norm_weight = d.w;
  }
  if (c.rope) {
    d.spec.cos = RopeTable(T, D, true).to(opts);
    d.spec.sin = RopeTable(T, D, false).to(opts);
  }
  const std::vector<int64_t> out_shape =
      c.heads_first ? std::vector<int64_t>{B, H, T, D} : std::vector<int64_t>{B, T, H, D};
  d.dy = at::randn(out_shape, at::kDouble).to(dtype);
  at::Tensor x64 = d.base.to(at::kDouble).requires_grad_(true);
  at::Tensor w64 = c.weight ? d.w_base.to(at::kDouble).requires_grad_(c.weight_grad) : at::Tensor();
  d.y64 = HeadTransformFloat64(x64, d.spec, w64);
  std::vector<at::Tensor> in64 = {x64};
  if (c.weight_grad) in64.push_back(w64);
  std::vector<at::Tensor> g64 = Grads(d.y64, d.dy, in64);
  d.y64 = d.y64.detach();
  d.dx64 = g64[0];
  if (c.weight_grad) d.dw64 = g64[1];
  return d;
}

// Runs the public op on inputs of `dtype`/`device` built from the case, checks output and gradients against float64.
void CheckCase(const Case& c, int64_t B, int64_t T, int64_t H, int64_t D, at::ScalarType dtype,
               const at::Device& device, bool fused, double tol) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(c.name + " B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
               " D=" + std::to_string(D) + " seed=" + std::to_string(seed));
  CaseData d = MakeCase(c, B, T, H, D, dtype, device);
#ifdef FLASHMORPH_CUDA
  if (fused) {
    ASSERT_TRUE(kernels::HeadTransformCudaSupports(d.x, d.spec));
  }
#endif
  at::Tensor y = kernels::HeadTransform(d.x, d.spec);
  ASSERT_EQ(y.scalar_type(), dtype);
  if (c.heads_first) {
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{B, H, T, D}));
    if (fused) {
      EXPECT_TRUE(y.is_contiguous());
    }
  } else {
    ASSERT_EQ(y.sizes(), d.x.sizes());
  }
  std::vector<at::Tensor> inputs = {d.x};
  if (c.weight_grad) inputs.push_back(d.w);
  std::vector<at::Tensor> grads = Grads(y, d.dy, inputs);
  EXPECT_TRUE(AllFinite(y));
  EXPECT_LE(RelErr(y, d.y64), tol) << "output";
  EXPECT_LE(RelErr(grads[0], d.dx64), 2 * tol) << "dx";
  if (c.weight_grad) {
    EXPECT_LE(RelErr(grads[1], d.dw64), 2 * tol) << "dweight";
  }
}

TEST(FusedOps, HeadTransformReferenceMatchesFloat64OnCpu) {
  for (const Case& c : kCases)
    for (int64_t D : {64, 48}) CheckCase(c, 2, 5, 3, D, at::kFloat, at::kCPU, false, 1e-5);
}

TEST(FusedOps, SwiGluAndRmsNormReferencesOnCpu) {
  FreshSeed();
  at::Tensor g = at::randn({3, 7, 40}, at::kDouble), u = at::randn({3, 7, 40}, at::kDouble);
  EXPECT_LE(RelErr(kernels::SwiGlu(g.to(at::kFloat), u.to(at::kFloat)), g * at::sigmoid(g) * u), 1e-6);
  at::Tensor x = at::randn({4, 48}, at::kDouble), w = at::randn({48}, at::kDouble);
  EXPECT_LE(RelErr(kernels::RmsNorm(x.to(at::kFloat), w.to(at::kFloat), 1e-6),
                   w * x * at::rsqrt(x.pow(2).mean(-1, true) + 1e-6)),
            1e-6);
}

// SwiGluBackward (the activation's gradients without its forward) against float64 autograd through silu(g) * u.
TEST(FusedOps, SwiGluBackwardMatchesAutogradOnCpu) {
  FreshSeed();
  at::Tensor g = (at::randn({3, 7, 40}, at::kDouble) * 3).requires_grad_(true);
  at::Tensor u = at::randn({3, 7, 40}, at::kDouble).requires_grad_(true);
  at::Tensor dy = at::randn({3, 7, 40}, at::kDouble);
  auto want = Grads(g * at::sigmoid(g) * u, dy, {g, u});
  auto [dg, du] = kernels::SwiGluBackward(g.detach().to(at::kFloat), u.detach().to(at::kFloat), dy.to(at::kFloat));
  EXPECT_EQ(dg.scalar_type(), at::kFloat);
  EXPECT_LE(RelErr(dg, want[0]), 1e-6);
  EXPECT_LE(RelErr(du, want[1]), 1e-6);
}

// The CUDA row kernels themselves (kernels/cuda/row_ops.cu), run on the CPU emulation of CUDA (tests/cuda_emu/):
// both head-transform families (one warp per row; the vectorized one, which rows that are not 16-byte aligned send
// back to the first, as the glue does), RMSNorm rows and SwiGLU, forward and backward, against float64.
cuda_emu::HeadRowsLayout Layout(const at::Tensor& t) {  // t: a [B, T, H, D] view
  cuda_emu::HeadRowsLayout r;
  r.B = static_cast<int>(t.size(0)), r.T = static_cast<int>(t.size(1)), r.H = static_cast<int>(t.size(2));
  r.D = static_cast<int>(t.size(3));
  r.stride_b = t.stride(0), r.stride_t = t.stride(1), r.stride_h = t.stride(2);
  return r;
}
bool RowsAligned16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 &&
         t.stride(2) % 8 == 0;
}
const uint16_t* Bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr()); }
uint16_t* MutableBits(const at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); }

void CheckEmulatedCase(const Case& c, int64_t B, int64_t T, int64_t H, int64_t D, bool vectorized) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(c.name + (vectorized ? " vectorized" : " warp per row") + " B=" + std::to_string(B) +
               " T=" + std::to_string(T) + " H=" + std::to_string(H) + " D=" + std::to_string(D) +
               " seed=" + std::to_string(seed));
  constexpr double kTol = 1.2e-2;
  CaseData d = MakeCase(c, B, T, H, D, at::kBFloat16, at::kCPU);
  const at::Tensor x = d.x.detach();
  const double nan = std::nan("");
  // Output, gradient and result layouts as the glue (kernels/fused_ops_cuda.cc) makes them.
  at::Tensor y = c.heads_first ? at::full({B, H, T, D}, nan, at::kBFloat16).transpose(1, 2)
                               : at::full({B, T, H, D}, nan, at::kBFloat16);
  at::Tensor w = c.weight ? d.w_base.contiguous() : at::Tensor();
  at::Tensor cos = c.rope ? d.spec.cos.contiguous() : at::Tensor(),
             sin = c.rope ? d.spec.sin.contiguous() : at::Tensor();
  cuda_emu::HeadOptions o;
  o.weight = w.defined() ? Bits(w) : nullptr;
  o.unit_norm = !c.weight && c.unit;
  o.eps = 1e-6f;
  o.cos = cos.defined() ? Bits(cos) : nullptr;
  o.sin = sin.defined() ? Bits(sin) : nullptr;
  o.silu = c.silu;
  o.l2 = c.l2;
  o.scale = static_cast<float>(c.scale);
  o.vectorized = vectorized && RowsAligned16(x);
  ASSERT_TRUE(cuda_emu::HeadTransform(Layout(x), Layout(y), o, Bits(x), MutableBits(y)));
  const at::Tensor y_out = c.heads_first ? y.transpose(1, 2) : y;
  EXPECT_TRUE(AllFinite(y_out));
  EXPECT_LE(RelErr(y_out, d.y64), kTol) << "output";

  const at::Tensor dy = c.heads_first ? d.dy.transpose(1, 2) : d.dy;  // [B, T, H, D] view of the contiguous gradient
  at::Tensor dx = at::empty_like(x).fill_(nan);
  at::Tensor dw = c.weight_grad ? at::zeros({D}, at::kFloat) : at::Tensor();
  o.vectorized = o.vectorized && RowsAligned16(dy);
  ASSERT_TRUE(cuda_emu::HeadTransformBackward(Layout(x), Layout(dy), Layout(dx), o, Bits(x), Bits(dy), MutableBits(dx),
                                              dw.defined() ? dw.data_ptr<float>() : nullptr));
  EXPECT_TRUE(AllFinite(dx));
  EXPECT_LE(RelErr(dx, d.dx64), 2 * kTol) << "dx";
  if (c.weight_grad) {
    EXPECT_LE(RelErr(dw, d.dw64), 2 * kTol) << "dweight";
  }
}

TEST(FusedOpsEmulated, HeadTransformKernelsMatchFloat64) {
  const int64_t before = cuda_emu::CollectiveCount();
  for (bool vectorized : {false, true})
    for (const Case& c : kCases)
      for (int64_t D : {64, 128, 256}) {
        CheckEmulatedCase(c, 2, 5, 3, D, vectorized);
        CheckEmulatedCase(c, 1, 7, 5, D, vectorized);  // 35 rows: partial warps' worth of rows at every D
      }
  EXPECT_GT(cuda_emu::CollectiveCount(), before) << "the emulation ran no warp collectives";
}

TEST(FusedOpsEmulated, RmsNormRowsAndSwiGluKernelsMatchFloat64) {
  FreshSeed();
  for (int64_t D : {8, 192, 2048}) {
    SCOPED_TRACE("D=" + std::to_string(D));
    at::Tensor x = (at::randn({37, D}, at::kDouble) * 3 + 0.5).to(at::kBFloat16);
    at::Tensor w = (1 + 0.3 * at::randn({D}, at::kDouble)).to(at::kBFloat16);
    at::Tensor dy = at::randn({37, D}, at::kDouble).to(at::kBFloat16);
    at::Tensor y = at::full({37, D}, std::nan(""), at::kBFloat16), dx = at::full_like(y, std::nan(""));
    ASSERT_TRUE(cuda_emu::RmsNormRows(37, static_cast<int>(D), Bits(x), Bits(w), 1e-6f, MutableBits(y)));
    ASSERT_TRUE(
        cuda_emu::RmsNormRowsBackward(37, static_cast<int>(D), Bits(x), Bits(w), Bits(dy), 1e-6f, MutableBits(dx)));
    at::Tensor x64 = x.to(at::kDouble).requires_grad_(true), w64 = w.to(at::kDouble);
    at::Tensor y64 = w64 * x64 * at::rsqrt(x64.pow(2).mean(-1, true) + 1e-6);
    at::Tensor dx64 = Grads(y64, dy, {x64})[0];
    EXPECT_LE(RelErr(y, y64), 8e-3);
    EXPECT_LE(RelErr(dx, dx64), 1.6e-2);
  }
  // The residual add fused with the norm: y = x + r, n = RMSNorm(y); dx = dy + the norm's gradient (with and
  // without a residual gradient).
  for (int64_t D : {8, 2048}) {
    SCOPED_TRACE("add+norm D=" + std::to_string(D));
    at::Tensor x = (at::randn({37, D}, at::kDouble) * 2).to(at::kBFloat16);
    at::Tensor r = (at::randn({37, D}, at::kDouble) + 0.3).to(at::kBFloat16);
    at::Tensor w = (1 + 0.3 * at::randn({D}, at::kDouble)).to(at::kBFloat16);
    at::Tensor dn = at::randn({37, D}, at::kDouble).to(at::kBFloat16),
               dy = at::randn({37, D}, at::kDouble).to(at::kBFloat16);
    at::Tensor y = at::full({37, D}, std::nan(""), at::kBFloat16), n = at::full_like(y, std::nan(""));
    ASSERT_TRUE(cuda_emu::AddRmsNormRows(37, static_cast<int>(D), Bits(x), Bits(r), Bits(w), 1e-6f, MutableBits(y),
                                         MutableBits(n)));
    at::Tensor x64 = x.to(at::kDouble).requires_grad_(true), r64 = r.to(at::kDouble).requires_grad_(true);
    at::Tensor y64 = x64 + r64;
    at::Tensor n64 = w.to(at::kDouble) * y64 * at::rsqrt(y64.pow(2).mean(-1, true) + 1e-6);
    EXPECT_LE(RelErr(y, y64), 8e-3);
    EXPECT_LE(RelErr(n, n64), 8e-3);
    ((y64 * dy.to(at::kDouble)).sum() + (n64 * dn.to(at::kDouble)).sum()).backward();
    for (bool residual : {true, false}) {
      at::Tensor dx = at::full_like(y, std::nan(""));
      ASSERT_TRUE(cuda_emu::AddRmsNormRowsBackward(37, static_cast<int>(D), Bits(y), Bits(w), Bits(dn),
                                                   residual ? Bits(dy) : nullptr, 1e-6f, MutableBits(dx)));
      at::Tensor want = residual ? x64.grad() : x64.grad() - dy.to(at::kDouble);
      EXPECT_LE(RelErr(dx, want), 1.6e-2) << (residual ? "with" : "without") << " the residual gradient";
    }
  }
  at::Tensor g = (at::randn({2, 333, 96}, at::kDouble) * 3).to(at::kBFloat16);
  at::Tensor u = at::randn({2, 333, 96}, at::kDouble).to(at::kBFloat16);
  at::Tensor dy = at::randn({2, 333, 96}, at::kDouble).to(at::kBFloat16);
  at::Tensor y = at::full_like(g, std::nan("")), dg = at::full_like(g, std::nan("")),
             du = at::full_like(g, std::nan(""));
  ASSERT_TRUE(cuda_emu::SwiGlu(g.numel(), Bits(g), Bits(u), MutableBits(y)));
  ASSERT_TRUE(cuda_emu::SwiGluBackward(g.numel(), Bits(g), Bits(u), Bits(dy), MutableBits(dg), MutableBits(du)));
  at::Tensor g64 = g.to(at::kDouble).requires_grad_(true), u64 = u.to(at::kDouble).requires_grad_(true);
  auto want = Grads(g64 * at::sigmoid(g64) * u64, dy, {g64, u64});
  EXPECT_LE(RelErr(y, g.to(at::kDouble) * at::sigmoid(g.to(at::kDouble)) * u.to(at::kDouble)), 8e-3);
  EXPECT_LE(RelErr(dg, want[0]), 1.6e-2);
  EXPECT_LE(RelErr(du, want[1]), 1.6e-2);
}

#ifdef FLASHMORPH_CUDA
#define FM_REQUIRE_GPU() \
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU"

// Both kernel families: one warp per row (default) and the vectorized one (SetVectorizedHeadTransform), which
// falls back to the first for rows that are not 16-byte aligned.
TEST(FusedOpsCuda, HeadTransformMatchesFloat64) {
  FM_REQUIRE_GPU();
  const bool before = kernels::VectorizedHeadTransform();
  for (bool vectorized : {false, true}) {
    kernels::SetVectorizedHeadTransform(vectorized);
    SCOPED_TRACE(vectorized ? "vectorized" : "warp per row");
    for (const Case& c : kCases)
      for (int64_t D : {64, 128, 256}) {
        CheckCase(c, 2, 37, 3, D, at::kBFloat16, at::kCUDA, true, 1.2e-2);
        CheckCase(c, 1, 300, 16, D, at::kBFloat16, at::kCUDA, true, 1.2e-2);
      }
  }
  kernels::SetVectorizedHeadTransform(before);
}

TEST(FusedOpsCuda, RmsNormRowsMatchFloat64WithGradient) {
  FM_REQUIRE_GPU();
  for (int64_t D : {8, 192, 1000, 2048, 5120}) {
    const uint64_t seed = FreshSeed();
    SCOPED_TRACE("D=" + std::to_string(D) + " seed=" + std::to_string(seed));
    at::Tensor base = (at::randn({3, 129, D}, at::kDouble) * 3 + 0.5).to(at::kBFloat16);
    at::Tensor wb = (1 + 0.3 * at::randn({D}, at::kDouble)).to(at::kBFloat16);
    at::Tensor x = base.cuda().requires_grad_(true), w = wb.cuda();
    ASSERT_TRUE(kernels::RmsNormRowsCudaSupports(x, w));
    at::Tensor y = kernels::RmsNorm(x, w, 1e-6);
    at::Tensor dy = at::randn(y.sizes(), at::kDouble).to(at::kBFloat16);
    at::Tensor dx = Grads(y, dy, {x})[0];
    at::Tensor x64 = base.to(at::kDouble).requires_grad_(true), w64 = wb.to(at::kDouble);
    at::Tensor y64 = w64 * x64 * at::rsqrt(x64.pow(2).mean(-1, true) + 1e-6);
    at::Tensor dx64 = Grads(y64, dy, {x64})[0];
    EXPECT_TRUE(AllFinite(y));
    EXPECT_LE(RelErr(y, y64), 8e-3);
    EXPECT_LE(RelErr(dx, dx64), 1.6e-2);
    // Strided input: made contiguous inside, same result.
    at::Tensor wide = at::cat({base, base}, -1).cuda();
    EXPECT_LE(RelErr(kernels::RmsNorm(wide.narrow(-1, D, D), w, 1e-6), y), 1e-6);
  }
}

// The residual add fused with the norm, through autograd: both outputs, and the gradient of x and r from losses on
// y and n together and on n alone.
TEST(FusedOpsCuda, AddRmsNormMatchesFloat64WithGradients) {
  FM_REQUIRE_GPU();
  for (int64_t D : {8, 2048}) {
    const uint64_t seed = FreshSeed();
    SCOPED_TRACE("D=" + std::to_string(D) + " seed=" + std::to_string(seed));
    at::Tensor xb = (at::randn({3, 129, D}, at::kDouble) * 2).to(at::kBFloat16);
    at::Tensor rb = (at::randn({3, 129, D}, at::kDouble) + 0.3).to(at::kBFloat16);
    at::Tensor wb = (1 + 0.3 * at::randn({D}, at::kDouble)).to(at::kBFloat16);
    at::Tensor dyb = at::randn({3, 129, D}, at::kDouble).to(at::kBFloat16);
    at::Tensor dnb = at::randn({3, 129, D}, at::kDouble).to(at::kBFloat16);
    for (bool use_y : {true, false}) {
      at::Tensor x = xb.cuda().requires_grad_(true), r = rb.cuda().requires_grad_(true), w = wb.cuda();
      ASSERT_TRUE(kernels::AddRmsNormCudaSupports(x, r, w));
      auto [y, n] = kernels::AddRmsNorm(x, r, w, 1e-6);
      at::Tensor loss = (n.to(at::kDouble) * dnb.cuda().to(at::kDouble)).sum();
      if (use_y) loss = loss + (y.to(at::kDouble) * dyb.cuda().to(at::kDouble)).sum();
      loss.backward();
      at::Tensor x64 = xb.to(at::kDouble).requires_grad_(true), r64 = rb.to(at::kDouble).requires_grad_(true);
      at::Tensor y64 = x64 + r64;
      at::Tensor n64 = wb.to(at::kDouble) * y64 * at::rsqrt(y64.pow(2).mean(-1, true) + 1e-6);
      at::Tensor loss64 = (n64 * dnb.to(at::kDouble)).sum();
      if (use_y) loss64 = loss64 + (y64 * dyb.to(at::kDouble)).sum();
      loss64.backward();
      EXPECT_TRUE(AllFinite(y) && AllFinite(n) && AllFinite(x.grad()));
      EXPECT_LE(RelErr(y, y64), 8e-3);
      EXPECT_LE(RelErr(n, n64), 8e-3);
      EXPECT_LE(RelErr(x.grad(), x64.grad()), 1.6e-2) << (use_y ? "y and n" : "n only");
      EXPECT_LE(RelErr(r.grad(), r64.grad()), 1.6e-2);
    }
  }
}

TEST(FusedOpsCuda, SwiGluMatchesFloat64WithGradient) {
  FM_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  at::Tensor gb = (at::randn({2, 333, 96}, at::kDouble) * 3).to(at::kBFloat16);
  at::Tensor ub = at::randn({2, 333, 96}, at::kDouble).to(at::kBFloat16);
  at::Tensor g = gb.cuda().requires_grad_(true), u = ub.cuda().requires_grad_(true);
  ASSERT_TRUE(kernels::SwiGluCudaSupports(g, u));
  at::Tensor y = kernels::SwiGlu(g, u);
  at::Tensor dy = at::randn(y.sizes(), at::kDouble).to(at::kBFloat16);
  auto grads = Grads(y, dy, {g, u});
  at::Tensor g64 = gb.to(at::kDouble).requires_grad_(true), u64 = ub.to(at::kDouble).requires_grad_(true);
  at::Tensor y64 = g64 * at::sigmoid(g64) * u64;
  auto want = Grads(y64, dy, {g64, u64});
  EXPECT_LE(RelErr(y, y64), 8e-3);
  EXPECT_LE(RelErr(grads[0], want[0]), 1.6e-2);
  EXPECT_LE(RelErr(grads[1], want[1]), 1.6e-2);
  // Every element written: a NaN-filled buffer reused by the allocator would show.
  EXPECT_TRUE(AllFinite(y) && AllFinite(grads[0]) && AllFinite(grads[1]));
  // The backward alone, from a float32 dy: the same kernel, so the same gradients.
  auto [dg, du] = kernels::SwiGluBackward(g.detach(), u.detach(), dy.to(at::kFloat).cuda());
  EXPECT_EQ(dg.scalar_type(), at::kBFloat16);
  EXPECT_LE(RelErr(dg, want[0]), 1.6e-2);
  EXPECT_LE(RelErr(du, want[1]), 1.6e-2);
  EXPECT_LE(RelErr(dg, grads[0]), 1e-6);
}
#endif

}  // namespace
}  // namespace fm
