// The segmented Lightning kernels (kernels/cuda/gla_segment.cu) on the CPU emulation of CUDA's execution model
// (tests/cuda_emu/): the same source the GPU compiles, run without a GPU, against the float64 references, on fresh
// random inputs (the seed is printed): outputs, final states, the chunk states of both state passes, and every
// gradient (q, k, v, decays, initial state) within bf16 tolerance; head sizes 64/128 in every combination, segments of
// one chunk, of several and with a ragged last one, weak and strong decays.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/linear_attention.h"
#include "tests/cuda_emu/emu_gla.h"
#include "tests/cuda_emu/emu_runtime.h"

namespace fm {
namespace {

constexpr int kChunk = 64;

struct Case {
  int64_t B, H, T, Dk, Dv;
  int segment_chunks;
  bool strong;
  bool v_bthd = false;  // v read from, dv written to [B, T, H, Dv] (the branch's projection layout)
};

std::string Name(const Case& c, uint64_t seed) {
  return "seed " + std::to_string(seed) + " B" + std::to_string(c.B) + " H" + std::to_string(c.H) + " T" +
         std::to_string(c.T) + " Dk" + std::to_string(c.Dk) + " Dv" + std::to_string(c.Dv) + " ns" +
         std::to_string(c.segment_chunks) + (c.strong ? " strong" : "") + (c.v_bthd ? " v[B,T,H,D]" : "");
}

uint64_t FreshSeed() {
  const uint64_t seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  at::manual_seed(seed);
  return seed;
}

double RelErr(const at::Tensor& got, const at::Tensor& want) {
  at::Tensor g = got.to(at::kDouble), w = want.to(at::kDouble);
  return (g - w).norm().item<double>() / (w.norm().item<double>() + 1e-30);
}

bool AllFinite(const at::Tensor& t) { return at::isfinite(t).all().item<bool>(); }

const uint16_t* Bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }
uint16_t* Bits(at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// Inputs in the kernels' layout ([B*H, T, D] bf16, g [B*H, T] fp32) and as float64 [B, H, T, D] of the same values.
struct Inputs {
  at::Tensor q, k, v, g, s0;  // kernel layout
  at::Tensor q64, k64, v64, g64, s064;
};

Inputs Make(const Case& c) {
  Inputs in;
  const int64_t BH = c.B * c.H;
  in.q = (at::randn({BH, c.T, c.Dk}) / std::sqrt(static_cast<double>(c.Dk))).to(at::kBFloat16);
  in.k = at::randn({BH, c.T, c.Dk}).to(at::kBFloat16);
  in.v = at::randn({BH, c.T, c.Dv}).to(at::kBFloat16);
  in.g = (at::log_sigmoid(at::randn({BH, c.T}) + (c.strong ? -2.0 : 3.0)) / (c.strong ? 1.0 : 4.0)).contiguous();
  in.s0 = (at::randn({BH, c.Dk, c.Dv}) * 0.5).contiguous();
  auto f64 = [&](const at::Tensor& t, std::vector<int64_t> shape) { return t.to(at::kDouble).reshape(shape); };
  in.q64 = f64(in.q, {c.B, c.H, c.T, c.Dk});
  in.k64 = f64(in.k, {c.B, c.H, c.T, c.Dk});
  in.v64 = f64(in.v, {c.B, c.H, c.T, c.Dv});
  in.g64 = f64(in.g, {c.B, c.H, c.T});
  in.s064 = f64(in.s0, {c.B, c.H, c.Dk, c.Dv});
  return in;
}

cuda_emu::GlaShape Shape(const Case& c) {
  return {static_cast<int>(c.B * c.H), static_cast<int>(c.T), static_cast<int>(c.Dk), static_cast<int>(c.Dv)};
}

void CheckForwardAndBackward(const Case& c) {
  const uint64_t seed = FreshSeed();
  const std::string where = Name(c, seed);
  SCOPED_TRACE(where);
  Inputs in = Make(c);
  const int64_t BH = c.B * c.H;
  at::Tensor out = at::full({BH, c.T, c.Dv}, std::nan(""), at::kBFloat16);
  at::Tensor final_state = at::full({BH, c.Dk, c.Dv}, std::nan(""), at::kFloat);
  std::vector<float> seg_entry;
  // v (and dv) in the [B, T, H, Dv] layout the branch's projection produces, when the case asks for it.
  at::Tensor v = c.v_bthd ? in.v.reshape({c.B, c.H, c.T, c.Dv}).transpose(1, 2).contiguous() : in.v;
  const cuda_emu::RowsSpec bthd{static_cast<int>(c.H), c.T * c.H * c.Dv, c.Dv, c.H * c.Dv};
  const cuda_emu::RowsSpec* v_rows = c.v_bthd ? &bthd : nullptr;
  const int64_t before = cuda_emu::CollectiveCount();
  ASSERT_TRUE(cuda_emu::GlaSegmentForward(Shape(c), c.segment_chunks, Bits(in.q), Bits(in.k), Bits(v),
                                          in.g.data_ptr<float>(), in.s0.data_ptr<float>(), Bits(out),
                                          final_state.data_ptr<float>(), &seg_entry, v_rows));
  EXPECT_GT(cuda_emu::CollectiveCount(), before) << "the emulation ran no warp collectives";

  std::vector<at::Tensor> leaves = {in.q64.clone().requires_grad_(), in.k64.clone().requires_grad_(),
                                    in.v64.clone().requires_grad_(), in.g64.clone().requires_grad_(),
                                    in.s064.clone().requires_grad_()};
  kernels::LinearAttentionResult ref =
      kernels::GatedLinearAttentionChunkedReference(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4]);
  EXPECT_TRUE(AllFinite(out) && AllFinite(final_state));
  const double eo = RelErr(out.reshape({c.B, c.H, c.T, c.Dv}), ref.output.detach());
  const double es = RelErr(final_state.reshape({c.B, c.H, c.Dk, c.Dv}), ref.final_state.detach());
  EXPECT_LE(eo, 2e-2);
  EXPECT_LE(es, 2e-2);

  // Gradients of sum(o * do) + sum(S_T * dS).
  at::Tensor dout = at::randn({BH, c.T, c.Dv}).to(at::kBFloat16);
  at::Tensor dfinal = (at::randn({BH, c.Dk, c.Dv}) * 0.1).contiguous();
  ((ref.output * dout.to(at::kDouble).reshape({c.B, c.H, c.T, c.Dv})).sum() +
   (ref.final_state * dfinal.to(at::kDouble).reshape({c.B, c.H, c.Dk, c.Dv})).sum())
      .backward();
  at::Tensor dq = at::full({BH, c.T, c.Dk}, std::nan(""), at::kBFloat16), dk = at::full_like(dq, std::nan(""));
  at::Tensor dv = at::full(c.v_bthd ? std::vector<int64_t>{c.B, c.T, c.H, c.Dv} : std::vector<int64_t>{BH, c.T, c.Dv},
                           std::nan(""), at::kBFloat16);
  at::Tensor dgamma = at::full({BH, c.T}, std::nan(""), at::kFloat);
  at::Tensor dinitial = at::full({BH, c.Dk, c.Dv}, std::nan(""), at::kFloat);
  ASSERT_TRUE(cuda_emu::GlaSegmentBackward(Shape(c), c.segment_chunks, Bits(in.q), Bits(in.k), Bits(v),
                                           in.g.data_ptr<float>(), Bits(dout), seg_entry, dfinal.data_ptr<float>(),
                                           Bits(dq), Bits(dk), Bits(dv), dgamma.data_ptr<float>(),
                                           dinitial.data_ptr<float>(), v_rows, v_rows));
  // dg_t = sum over s >= t of (q.dq - k.dk)_s + <S_T, dS_T> (docs/KERNELS.md, "Backward of GLA").
  at::Tensor dg = dgamma.to(at::kDouble).flip(1).cumsum(1).flip(1) +
                  (final_state.to(at::kDouble) * dfinal.to(at::kDouble)).sum({1, 2}).unsqueeze(1);
  const std::vector<at::Tensor> got = {dq.reshape({c.B, c.H, c.T, c.Dk}), dk.reshape({c.B, c.H, c.T, c.Dk}),
                                       c.v_bthd ? dv.transpose(1, 2) : dv.reshape({c.B, c.H, c.T, c.Dv}),
                                       dg.reshape({c.B, c.H, c.T}), dinitial.reshape({c.B, c.H, c.Dk, c.Dv})};
  const char* names[] = {"dq", "dk", "dv", "dg", "ds0"};
  std::string line;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_TRUE(AllFinite(got[i])) << names[i];
    const double e = RelErr(got[i], leaves[i].grad());
    EXPECT_LE(e, 4e-2) << names[i];
    line += std::string(" ") + names[i] + " " + std::to_string(e);
  }
  std::printf("[emu gla] %s: out %.2e state %.2e%s\n", where.c_str(), eo, es, line.c_str());
}

// The state passes (forward and reverse) against float64 recurrences over the chunks.
void CheckStatePasses(const Case& c) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(Name(c, seed));
  Inputs in = Make(c);
  const int64_t BH = c.B * c.H, N = c.T / kChunk;
  at::Tensor dout = at::randn({BH, c.T, c.Dv}).to(at::kBFloat16);
  for (bool reverse : {false, true}) {
    SCOPED_TRACE(reverse ? "reverse" : "forward");
    const at::Tensor& a = reverse ? in.q : in.k;
    const at::Tensor& b = reverse ? dout : in.v;
    at::Tensor states = at::full({BH, N, c.Dk, c.Dv}, std::nan(""), at::kBFloat16);
    at::Tensor s_out = at::full({BH, c.Dk, c.Dv}, std::nan(""), at::kFloat);
    ASSERT_TRUE(cuda_emu::GlaSegmentStatePass(Shape(c), c.segment_chunks, reverse, Bits(a), Bits(b),
                                              in.g.data_ptr<float>(), in.s0.data_ptr<float>(), Bits(states),
                                              s_out.data_ptr<float>()));
    // S <- exp(gamma) S + a~^T b per chunk, a~ = a exp(gamma - G) (forward) or a exp(G) (reverse, chunks last first).
    at::Tensor S = in.s0.to(at::kDouble);
    at::Tensor want = at::empty({BH, N, c.Dk, c.Dv}, at::kDouble);
    at::Tensor a64 = a.to(at::kDouble), b64 = b.to(at::kDouble), g64 = in.g.to(at::kDouble);
    for (int64_t step = 0; step < N; ++step) {
      const int64_t n = reverse ? N - 1 - step : step;
      want.select(1, n).copy_(S);
      at::Tensor G = g64.narrow(1, n * kChunk, kChunk).cumsum(1);  // [BH, C]
      at::Tensor gamma = G.select(1, kChunk - 1).unsqueeze(1);     // [BH, 1]
      at::Tensor f = reverse ? G.exp() : (gamma - G).exp();
      at::Tensor at_ = a64.narrow(1, n * kChunk, kChunk) * f.unsqueeze(2);
      S = gamma.exp().unsqueeze(2) * S + at::matmul(at_.transpose(1, 2), b64.narrow(1, n * kChunk, kChunk));
    }
    EXPECT_TRUE(AllFinite(states) && AllFinite(s_out));
    EXPECT_LE(RelErr(states, want), 2e-2);
    EXPECT_LE(RelErr(s_out, S), 2e-2);
  }
}

TEST(CudaEmulation, SegmentedLightningMatchesFloat64) {
  // Head sizes 64 and 128 in every combination; segments of 1, 2, 3 chunks (ragged: 5 chunks in segments of 2 or 3).
  const std::vector<Case> cases = {{1, 2, 320, 128, 128, 2, false},    {2, 1, 192, 64, 64, 1, false},
                                   {1, 2, 320, 64, 128, 3, true},      {1, 1, 256, 128, 64, 4, false},
                                   {1, 1, 128, 64, 64, 8, true},       {2, 3, 192, 128, 64, 2, false, true},
                                   {1, 2, 256, 64, 128, 3, true, true}};
  for (const Case& c : cases) CheckForwardAndBackward(c);
}

TEST(CudaEmulation, SegmentedStatePassesMatchFloat64) {
  for (const Case& c : std::vector<Case>{{1, 2, 320, 128, 128, 2, false}, {2, 1, 256, 64, 128, 3, true}})
    CheckStatePasses(c);
}

}  // namespace
}  // namespace fm
