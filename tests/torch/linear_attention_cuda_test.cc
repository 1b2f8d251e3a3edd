// The CUDA linear-attention kernels (kernels/linear_attention_cuda.h) against the float64 ATen references, on fresh
// random inputs (the seed is printed) at several shapes, including lengths that are not whole chunks and head sizes
// that are padded inside: outputs, final states and every gradient within bf16 tolerance, no NaN, every output
// element written (the allocator is poisoned with NaN first). Runs only on a CUDA build with a GPU; skipped
// elsewhere (CPU CI tests the references in linear_attention_test.cc).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/gdn_backward.h"
#include "kernels/linear_attention.h"
#include "kernels/linear_attention_cuda.h"

namespace fm {
namespace {

#ifndef FLASHMORPH_CUDA
TEST(LinearAttentionCuda, NeedsACudaBuild) { GTEST_SKIP() << "CPU build: the kernels are not compiled"; }
#else
using kernels::LinearAttentionResult;

bool HaveGpu() { return at::hasCUDA(); }

#define FM_REQUIRE_GPU() \
  if (!HaveGpu()) GTEST_SKIP() << "needs a CUDA build and a GPU"

struct Shape {
  int64_t B, H, T, Dk, Dv;
};

// Shapes: whole chunks, ragged tails, one step, padded head sizes (48 -> 64, 100 -> 128), Dk != Dv. The one-step
// shape has 8 heads: its decay gradient is one sum per head, which can nearly cancel, and the relative L2 error
// over a single such number would measure that cancellation rather than the kernel (seen at 0.72 with one head).
const std::vector<Shape> kShapes = {{2, 3, 256, 64, 64},  {1, 2, 200, 128, 128}, {2, 4, 1, 64, 64},
                                    {2, 2, 333, 128, 64}, {1, 3, 97, 48, 48},    {1, 2, 130, 100, 128}};

uint64_t FreshSeed() {
  const uint64_t seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  at::manual_seed(seed);
  return seed;
}

at::Tensor Cuda(const at::Tensor& t) { return t.to(at::Device(at::kCUDA)); }
at::Tensor F64(const at::Tensor& t) { return t.detach().to(at::kDouble); }

double RelErr(const at::Tensor& got, const at::Tensor& want) {
  at::Tensor g = got.detach().to(at::kDouble), w = want.detach().to(at::kDouble).to(g.device());
  return (g - w).norm().item<double>() / (w.norm().item<double>() + 1e-30);
}

bool AllFinite(const at::Tensor& t) { return at::isfinite(t.detach()).all().item<bool>(); }

// Fills freed allocator blocks with NaN so that outputs the kernels forget to write show up as NaN.
void PoisonAllocator(int64_t bytes) {
  std::vector<at::Tensor> blocks;
  for (int i = 0; i < 8; ++i) {
    blocks.push_back(at::full({bytes / 4}, std::nan(""), at::TensorOptions().device(at::kCUDA).dtype(at::kFloat)));
  }
}

struct GlaInputs {
  at::Tensor q, k, v, g, s0;
};

// q pre-scaled by Dk^-1/2; decays log-sigmoid shaped (strong = up to ~-5 per step). With v_bthd, v is the [B, H, T, D]
// view of a [B, T, H, D] tensor, as the branches pass it (the segmented kernels read it in place).
GlaInputs MakeGla(const Shape& s, bool per_channel, bool strong, bool v_bthd = false) {
  GlaInputs in;
  in.q = Cuda(at::randn({s.B, s.H, s.T, s.Dk}) / std::sqrt(static_cast<double>(s.Dk))).to(at::kBFloat16);
  in.k = Cuda(at::randn({s.B, s.H, s.T, s.Dk})).to(at::kBFloat16);
  in.v = v_bthd ? Cuda(at::randn({s.B, s.T, s.H, s.Dv})).to(at::kBFloat16).transpose(1, 2)
                : Cuda(at::randn({s.B, s.H, s.T, s.Dv})).to(at::kBFloat16);
  std::vector<int64_t> gshape = {s.B, s.H, s.T};
  if (per_channel) gshape.push_back(s.Dk);
  at::Tensor raw = at::randn(gshape) + (strong ? -2.0 : 3.0);
  in.g = Cuda(at::log_sigmoid(raw) / (strong ? 1.0 : 4.0)).to(at::kFloat);
  in.s0 = Cuda(at::randn({s.B, s.H, s.Dk, s.Dv}) * 0.5).to(at::kFloat);
  return in;
}

constexpr double kFwdTol = 2e-2;  // relative L2: bf16 operands, fp32 accumulation and state
constexpr double kBwdTol = 4e-2;

void CheckGlaForward(const Shape& s, bool per_channel, bool strong, bool v_bthd = false) {
  const uint64_t seed = FreshSeed();
  GlaInputs in = MakeGla(s, per_channel, strong, v_bthd);
  PoisonAllocator(s.B * s.H * (s.T + 64) * std::max(s.Dk, s.Dv) * 8);
  LinearAttentionResult got = kernels::GatedLinearAttentionCuda(in.q, in.k, in.v, in.g, in.s0);
  LinearAttentionResult want =
      kernels::GatedLinearAttentionChunkedReference(F64(in.q), F64(in.k), F64(in.v), F64(in.g), F64(in.s0));
  const std::string where = "seed " + std::to_string(seed) + " B" + std::to_string(s.B) + " H" + std::to_string(s.H) +
                            " T" + std::to_string(s.T) + " Dk" + std::to_string(s.Dk) + " Dv" + std::to_string(s.Dv) +
                            (per_channel ? " per-channel" : " scalar") + (strong ? " strong" : "") +
                            (v_bthd ? " v[B,T,H,D]" : "");
  ASSERT_EQ(got.output.sizes(), want.output.sizes()) << where;
  ASSERT_EQ(got.output.scalar_type(), at::kBFloat16) << where;
  ASSERT_EQ(got.final_state.scalar_type(), at::kFloat) << where;
  EXPECT_TRUE(AllFinite(got.output)) << where;
  EXPECT_TRUE(AllFinite(got.final_state)) << where;
  const double eo = RelErr(got.output, want.output), es = RelErr(got.final_state, want.final_state);
  EXPECT_LE(eo, kFwdTol) << where;
  EXPECT_LE(es, kFwdTol) << where;
  std::printf("[gla fwd] %s: rel err out %.2e state %.2e\n", where.c_str(), eo, es);
}

TEST(LinearAttentionCuda, GlaForwardMatchesFloat64) {
  FM_REQUIRE_GPU();
  for (const Shape& s : kShapes) {
    for (bool per_channel : {false, true}) CheckGlaForward(s, per_channel, /*strong=*/false);
  }
  CheckGlaForward({1, 2, 300, 128, 128}, /*per_channel=*/true, /*strong=*/true);
  CheckGlaForward({1, 2, 300, 128, 128}, /*per_channel=*/false, /*strong=*/true);
}

// Gradients of sum(o * do) + sum(S_T * dS) for q, k, v, g and the initial state, against float64 autograd.
void CheckGlaBackward(const Shape& s, bool per_channel, bool v_bthd = false) {
  const uint64_t seed = FreshSeed();
  GlaInputs in = MakeGla(s, per_channel, false, v_bthd);
  at::Tensor dout = Cuda(at::randn({s.B, s.H, s.T, s.Dv})).to(at::kBFloat16);
  at::Tensor dstate = Cuda(at::randn({s.B, s.H, s.Dk, s.Dv}) * 0.1);
  std::vector<at::Tensor> ours = {in.q.clone().requires_grad_(), in.k.clone().requires_grad_(),
                                  in.v.clone().requires_grad_(), in.g.clone().requires_grad_(),
                                  in.s0.clone().requires_grad_()};
  std::vector<at::Tensor> ref;
  for (const at::Tensor& t : ours) ref.push_back(F64(t).requires_grad_());
  PoisonAllocator(s.B * s.H * (s.T + 64) * std::max(s.Dk, s.Dv) * 8);
  LinearAttentionResult a = kernels::GatedLinearAttentionCuda(ours[0], ours[1], ours[2], ours[3], ours[4]);
  ((a.output.to(at::kFloat) * dout.to(at::kFloat)).sum() + (a.final_state * dstate).sum()).backward();
  LinearAttentionResult b = kernels::GatedLinearAttentionChunkedReference(ref[0], ref[1], ref[2], ref[3], ref[4]);
  ((b.output * F64(dout)).sum() + (b.final_state * F64(dstate)).sum()).backward();
  const char* names[] = {"dq", "dk", "dv", "dg", "ds0"};
  std::string line;
  for (size_t i = 0; i < ours.size(); ++i) {
    ASSERT_TRUE(ours[i].grad().defined()) << names[i];
    EXPECT_TRUE(AllFinite(ours[i].grad())) << names[i] << " seed " << seed;
    const double e = RelErr(ours[i].grad(), ref[i].grad());
    EXPECT_LE(e, kBwdTol) << names[i] << " seed " << seed << " T" << s.T << " Dk" << s.Dk << " Dv" << s.Dv
                          << (per_channel ? " per-channel" : " scalar");
    line += std::string(" ") + names[i] + " " + std::to_string(e);
  }
  std::printf("[gla bwd] seed %llu T%lld Dk%lld Dv%lld %s:%s\n", static_cast<unsigned long long>(seed),
              static_cast<long long>(s.T), static_cast<long long>(s.Dk), static_cast<long long>(s.Dv),
              per_channel ? "per-channel" : "scalar", line.c_str());
}

TEST(LinearAttentionCuda, GlaBackwardMatchesFloat64) {
  FM_REQUIRE_GPU();
  for (const Shape& s : kShapes) {
    for (bool per_channel : {false, true}) CheckGlaBackward(s, per_channel);
  }
}

// The other tests run the default two-phase state pass; the sequential scan kernel (kept for comparison) is checked
// here the same way.
TEST(LinearAttentionCuda, SequentialStateScanMatchesFloat64) {
  FM_REQUIRE_GPU();
  const bool before = kernels::SetSequentialStateScan(true);
  for (bool per_channel : {false, true}) {
    CheckGlaForward({2, 3, 1000, 128, 128}, per_channel, /*strong=*/false);
    CheckGlaBackward({1, 2, 1000, 128, 64}, per_channel);
  }
  kernels::SetSequentialStateScan(before);
}

// Scalar decays run over segments of chunks (kernels/cuda/gla_segment.cu) by default, and at the sizes above the
// automatic segment length is one chunk. Here: segments of several lengths, a ragged last segment, and the
// two-phase pass with its separate output kernel (what per-channel decays run) for scalar decays too.
TEST(LinearAttentionCuda, SegmentLengthsAndTwoPhasePassMatchFloat64) {
  FM_REQUIRE_GPU();
  for (int chunks : {1, 3, 8}) {
    std::printf("[segments] %d chunks per segment\n", chunks);
    const int before = kernels::SetGlaSegmentChunks(chunks);
    CheckGlaForward({2, 3, 1000, 128, 128}, /*per_channel=*/false, /*strong=*/false);
    CheckGlaForward({1, 2, 1500, 64, 128}, /*per_channel=*/false, /*strong=*/true);
    CheckGlaForward({3, 1, 700, 128, 64}, /*per_channel=*/false, /*strong=*/false);
    CheckGlaBackward({1, 2, 1000, 128, 64}, /*per_channel=*/false);
    CheckGlaBackward({2, 1, 777, 64, 64}, /*per_channel=*/false);
    // v as the branches pass it (a [B, H, T, D] view of [B, T, H, D]): read in place, dv returned in that layout.
    CheckGlaForward({2, 3, 512, 128, 128}, /*per_channel=*/false, /*strong=*/false, /*v_bthd=*/true);
    CheckGlaBackward({2, 3, 512, 128, 64}, /*per_channel=*/false, /*v_bthd=*/true);
    kernels::SetGlaSegmentChunks(before);
  }
  std::printf("[segments] off: two-phase pass\n");
  const bool before = kernels::SetSegmentedGla(false);
  CheckGlaForward({2, 3, 1000, 128, 128}, /*per_channel=*/false, /*strong=*/false);
  CheckGlaBackward({1, 2, 1000, 128, 64}, /*per_channel=*/false);
  kernels::SetSegmentedGla(before);
}

struct GdnInputs {
  at::Tensor q, k, v, g, beta, s0;
};

GdnInputs MakeGdn(const Shape& s) {
  GdnInputs in;
  in.q = Cuda(at::randn({s.B, s.H, s.T, s.Dk}) / std::sqrt(static_cast<double>(s.Dk))).to(at::kBFloat16);
  at::Tensor k = at::randn({s.B, s.H, s.T, s.Dk});
  in.k = Cuda(k / k.norm(2, -1, true)).to(at::kBFloat16);
  in.v = Cuda(at::randn({s.B, s.H, s.T, s.Dv})).to(at::kBFloat16);
  in.g = Cuda(at::log_sigmoid(at::randn({s.B, s.H, s.T}) + 3.0)).to(at::kFloat);
  in.beta = Cuda(at::sigmoid(at::randn({s.B, s.H, s.T}))).to(at::kFloat);
  in.s0 = Cuda(at::randn({s.B, s.H, s.Dk, s.Dv}) * 0.5).to(at::kFloat);
  return in;
}

TEST(LinearAttentionCuda, GatedDeltaRuleForwardAndBackwardMatchFloat64) {
  FM_REQUIRE_GPU();
  for (const Shape& s : kShapes) {
    const uint64_t seed = FreshSeed();
    GdnInputs in = MakeGdn(s);
    std::vector<at::Tensor> ours = {in.q.clone().requires_grad_(),    in.k.clone().requires_grad_(),
                                    in.v.clone().requires_grad_(),    in.g.clone().requires_grad_(),
                                    in.beta.clone().requires_grad_(), in.s0.clone().requires_grad_()};
    std::vector<at::Tensor> ref;
    for (const at::Tensor& t : ours) ref.push_back(F64(t).requires_grad_());
    PoisonAllocator(s.B * s.H * (s.T + 64) * std::max(s.Dk, s.Dv) * 8);
    LinearAttentionResult a = kernels::GatedDeltaRuleCuda(ours[0], ours[1], ours[2], ours[3], ours[4], ours[5]);
    LinearAttentionResult b = kernels::GatedDeltaRuleChunkedReference(ref[0], ref[1], ref[2], ref[3], ref[4], ref[5]);
    EXPECT_TRUE(AllFinite(a.output)) << "seed " << seed;
    const double eo = RelErr(a.output, b.output), es = RelErr(a.final_state, b.final_state);
    EXPECT_LE(eo, kFwdTol) << "seed " << seed << " T" << s.T << " Dk" << s.Dk;
    EXPECT_LE(es, kFwdTol) << "seed " << seed << " T" << s.T << " Dk" << s.Dk;
    at::Tensor dout = Cuda(at::randn({s.B, s.H, s.T, s.Dv}));
    ((a.output.to(at::kFloat) * dout).sum() + a.final_state.sum() * 0.1).backward();
    ((b.output * F64(dout)).sum() + b.final_state.sum() * 0.1).backward();
    std::string line;
    for (size_t i = 0; i < ours.size(); ++i) {
      ASSERT_TRUE(ours[i].grad().defined()) << i;
      const double e = RelErr(ours[i].grad(), ref[i].grad());
      EXPECT_LE(e, kBwdTol) << "grad " << i << " seed " << seed << " T" << s.T;
      line += " " + std::to_string(e);
    }
    std::printf("[gdn] seed %llu T%lld Dk%lld Dv%lld: out %.2e state %.2e grads%s\n",
                static_cast<unsigned long long>(seed), static_cast<long long>(s.T), static_cast<long long>(s.Dk),
                static_cast<long long>(s.Dv), eo, es, line.c_str());
  }
}

// Decoding: the recurrent kernel continues a chunked prefill; together they equal one float64 pass.
// The explicit chunked backward on fp32 CUDA tensors (its sequential passes run as the fp32 recurrence kernels of
// kernels/cuda/gdn_recurrence.cu) against the same function in float64 on the CPU (the ATen loops): unpadded odd
// shapes, chunks shorter than 64 (T < 64) and value widths that are not multiples of the kernel's 16-column tiles.
TEST(LinearAttentionCuda, GatedDeltaExplicitBackwardRecurrenceKernelsMatchFloat64) {
  FM_REQUIRE_GPU();
  const std::vector<Shape> shapes = {
      {2, 3, 256, 64, 64}, {1, 2, 200, 128, 128}, {1, 2, 37, 48, 40}, {2, 1, 130, 100, 72}, {1, 1, 1, 64, 64}};
  for (const Shape& s : shapes) {
    const uint64_t seed = FreshSeed();
    GdnInputs in = MakeGdn(s);
    auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat); };
    const at::Tensor dout = Cuda(at::randn({s.B, s.H, s.T, s.Dv}));
    const at::Tensor dfinal = Cuda(at::randn({s.B, s.H, s.Dk, s.Dv}) * 0.1);
    kernels::GatedDeltaRuleGrads got =
        kernels::GatedDeltaRuleChunkedBackward(f32(in.q), f32(in.k), f32(in.v), in.g, in.beta, in.s0, dout, dfinal);
    kernels::GatedDeltaRuleGrads want = kernels::GatedDeltaRuleChunkedBackward(
        F64(in.q).cpu(), F64(in.k).cpu(), F64(in.v).cpu(), F64(in.g).cpu(), F64(in.beta).cpu(), F64(in.s0).cpu(),
        F64(dout).cpu(), F64(dfinal).cpu());
    const std::vector<std::pair<const char*, std::pair<at::Tensor, at::Tensor> > > pairs = {
        {"dq", {got.dq, want.dq}},          {"dk", {got.dk, want.dk}},
        {"dv", {got.dv, want.dv}},          {"dg", {got.dg, want.dg}},
        {"dbeta", {got.dbeta, want.dbeta}}, {"ds0", {got.dinitial_state, want.dinitial_state}}};
    for (const auto& [name, p] : pairs) {
      ASSERT_TRUE(p.first.is_cuda()) << name;
      EXPECT_TRUE(AllFinite(p.first)) << name << " seed " << seed;
      EXPECT_LE(RelErr(p.first, p.second), 1e-4)
          << name << " seed " << seed << " T" << s.T << " Dk" << s.Dk << " Dv" << s.Dv;
    }
  }
}

TEST(LinearAttentionCuda, PrefillThenDecodeEqualsOnePass) {
  FM_REQUIRE_GPU();
  for (bool delta : {false, true}) {
    for (at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
      const Shape s{2, 3, 77, 64, 128};
      const uint64_t seed = FreshSeed();
      GdnInputs in = MakeGdn(s);
      at::Tensor q = in.q.to(dtype), k = in.k.to(dtype), v = in.v.to(dtype);
      const int64_t t0 = 70;
      auto head = [&](const at::Tensor& x) { return x.narrow(2, 0, t0); };
      auto tail = [&](const at::Tensor& x) { return x.narrow(2, t0, s.T - t0); };
      LinearAttentionResult pre =
          delta ? kernels::GatedDeltaRuleChunked(head(q), head(k), head(v), head(in.g), head(in.beta), in.s0)
                : kernels::GatedLinearAttentionChunked(head(q), head(k), head(v), head(in.g), in.s0);
      std::vector<at::Tensor> outs = {pre.output.to(at::kDouble)};
      at::Tensor state = pre.final_state;
      for (int64_t t = t0; t < s.T; ++t) {  // one token at a time, as a decoder would
        auto step = [&](const at::Tensor& x) { return x.narrow(2, t, 1); };
        LinearAttentionResult r =
            delta ? kernels::GatedDeltaRuleRecurrentCuda(step(q), step(k), step(v), step(in.g), step(in.beta), state)
                  : kernels::GatedLinearAttentionRecurrentCuda(step(q), step(k), step(v), step(in.g), state);
        ASSERT_EQ(r.output.scalar_type(), dtype);
        outs.push_back(r.output.to(at::kDouble));
        state = r.final_state;
      }
      at::Tensor got = at::cat(outs, 2);
      LinearAttentionResult want =
          delta ? kernels::GatedDeltaRuleChunkedReference(F64(q), F64(k), F64(v), F64(in.g), F64(in.beta), F64(in.s0))
                : kernels::GatedLinearAttentionChunkedReference(F64(q), F64(k), F64(v), F64(in.g), F64(in.s0));
      const double tol = dtype == at::kFloat ? 1e-4 : kFwdTol;
      const std::string where =
          "seed " + std::to_string(seed) + (delta ? " gdn " : " gla ") + std::string(at::toString(dtype));
      EXPECT_LE(RelErr(tail(got), tail(want.output)), tol) << "decoded steps, " << where;
      EXPECT_LE(RelErr(got, want.output), tol) << where;
      EXPECT_LE(RelErr(state, want.final_state), tol) << where;
      EXPECT_TRUE(AllFinite(got));
    }
  }
}

TEST(LinearAttentionCuda, PublicOpsDispatchToTheKernelsOnCudaBf16) {
  FM_REQUIRE_GPU();
  FreshSeed();
  GlaInputs in = MakeGla({1, 2, 150, 64, 64}, false, false);
  LinearAttentionResult a = kernels::GatedLinearAttentionChunked(in.q, in.k, in.v, in.g, in.s0);
  LinearAttentionResult b = kernels::GatedLinearAttentionCuda(in.q, in.k, in.v, in.g, in.s0);
  EXPECT_TRUE(at::equal(a.output, b.output));
  EXPECT_TRUE(at::equal(a.final_state, b.final_state));
  // Without an initial state (zeros), with gradients.
  at::Tensor q = in.q.clone().requires_grad_();
  LinearAttentionResult c = kernels::GatedLinearAttentionCuda(q, in.k, in.v, in.g, at::Tensor());
  LinearAttentionResult d =
      kernels::GatedLinearAttentionChunkedReference(F64(in.q), F64(in.k), F64(in.v), F64(in.g), at::Tensor());
  EXPECT_LE(RelErr(c.output, d.output), kFwdTol);
  c.output.to(at::kFloat).sum().backward();
  EXPECT_TRUE(q.grad().defined());
  GdnInputs gi = MakeGdn({1, 2, 150, 64, 64});
  LinearAttentionResult e = kernels::GatedDeltaRuleCuda(gi.q, gi.k, gi.v, gi.g, gi.beta, at::Tensor());
  LinearAttentionResult f =
      kernels::GatedDeltaRuleChunkedReference(F64(gi.q), F64(gi.k), F64(gi.v), F64(gi.g), F64(gi.beta), at::Tensor());
  EXPECT_LE(RelErr(e.output, f.output), kFwdTol);
  // Float32 on CUDA stays on the reference path (the kernels take bf16).
  EXPECT_FALSE(kernels::LinearAttentionCudaSupports(in.q.to(at::kFloat), in.k.to(at::kFloat), in.v.to(at::kFloat)));
  EXPECT_THROW(kernels::GatedLinearAttentionCuda(in.q.cpu(), in.k.cpu(), in.v.cpu(), in.g.cpu(), at::Tensor()),
               c10::Error);
}

TEST(LinearAttentionCuda, GateMixMatchesAtenWithGradients) {
  FM_REQUIRE_GPU();
  const uint64_t seed = FreshSeed();
  const int64_t H = 4, D = 64;
  at::Tensor full = Cuda(at::randn({2, 33, H * D})).to(at::kBFloat16).requires_grad_();
  at::Tensor linear = Cuda(at::randn({2, 33, H * D})).to(at::kBFloat16).requires_grad_();
  at::Tensor a = Cuda(at::rand({H})).requires_grad_();
  at::Tensor dy = Cuda(at::randn({2, 33, 2 * H * D}));
  at::Tensor out = kernels::GateMixCuda(full, linear, a, H);
  (out.to(at::kFloat) * dy).sum().backward();

  at::Tensor f2 = F64(full).requires_grad_(), l2 = F64(linear).requires_grad_(), a2 = F64(a).requires_grad_();
  at::Tensor cols = a2.repeat_interleave(D);
  at::Tensor want = at::cat({f2 * cols, l2 * (1 - cols)}, -1);
  (want * F64(dy)).sum().backward();
  EXPECT_LE(RelErr(out, want), 1e-2) << "seed " << seed;
  EXPECT_LE(RelErr(full.grad(), f2.grad()), 1e-2) << "seed " << seed;
  EXPECT_LE(RelErr(linear.grad(), l2.grad()), 1e-2) << "seed " << seed;
  EXPECT_LE(RelErr(a.grad(), a2.grad()), 1e-2) << "seed " << seed;  // dy is rounded to bf16
}

#endif  // FLASHMORPH_CUDA

}  // namespace
}  // namespace fm
