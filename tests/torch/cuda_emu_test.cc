// The linear-attention kernels (kernels/cuda/gla_segment.cu, gla_chunk.cu, gdn_chunk.cu, gdn_recurrence.cu,
// small_ops.cu) on the CPU emulation of CUDA's execution model (tests/cuda_emu/): the same sources the GPU compiles,
// run without a GPU, against the float64 references, on fresh random inputs (the seed is printed). Segmented
// Lightning: outputs, final states, the chunk states of both state passes and every gradient, head sizes 64/128 in
// every combination, segments of one chunk, of several and with a ragged last one, weak and strong decays, v in
// place. The two-phase GLA path (per-channel and scalar decays, the sequential scan), the gated delta rule's forward
// and backward recurrences, decoding's recurrence and the gate mix.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/linear_attention.h"
#include "tests/cuda_emu/emu_gla.h"
#include "tests/cuda_emu/emu_linear_attention.h"
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

// dg of GLA from the gradient kernel's dgamma, as the glue's DecayGrad forms it: scalar decays sum q.dq - k.dk over
// the steps from t on; per channel the kernel already summed inside chunks and the later chunks' totals are added;
// both add <S_T, dS_T> (per channel: over the value columns).
at::Tensor DecayGrad(const at::Tensor& dgamma, const at::Tensor& chunk_sums, const at::Tensor& final_state,
                     const at::Tensor& dfinal, bool per_channel, int64_t T, int64_t C) {
  at::Tensor sd = final_state.to(at::kDouble) * dfinal.to(at::kDouble);  // [BH, DK, DV]
  if (!per_channel) return dgamma.to(at::kDouble).flip(1).cumsum(1).flip(1) + sd.sum({1, 2}).unsqueeze(1);
  at::Tensor sums = chunk_sums.to(at::kDouble);  // [BH, N, DK]
  at::Tensor later = sums.flip(1).cumsum(1).flip(1) - sums;
  const int64_t BH = dgamma.size(0), N = T / C, DK = dgamma.size(2);
  return (dgamma.to(at::kDouble).view({BH, N, C, DK}) + later.unsqueeze(2)).view({BH, T, DK}) + sd.sum(2).unsqueeze(1);
}

// The two-phase GLA path (per-channel decays, and scalar ones with segments off) and its sequential scan variant:
// outputs, final states and every gradient against float64 autograd.
TEST(CudaEmulation, TwoPhaseGlaMatchesFloat64) {
  struct GlaCase {
    int64_t BH, T, Dk, Dv;
    bool per_channel, sequential;
  };
  for (const GlaCase& c : std::vector<GlaCase>{{2, 128, 64, 64, true, false},
                                               {1, 96, 128, 64, true, false},
                                               {2, 128, 64, 128, false, false},
                                               {1, 64, 64, 64, true, true},
                                               {1, 128, 128, 128, false, true}}) {
    const uint64_t seed = FreshSeed();
    SCOPED_TRACE("seed " + std::to_string(seed) + " BH" + std::to_string(c.BH) + " T" + std::to_string(c.T) + " Dk" +
                 std::to_string(c.Dk) + " Dv" + std::to_string(c.Dv) + (c.per_channel ? " per-channel" : " scalar") +
                 (c.sequential ? " sequential" : ""));
    const int64_t C = c.per_channel ? 32 : 64, N = c.T / C;
    at::Tensor q = (at::randn({c.BH, c.T, c.Dk}) / std::sqrt(static_cast<double>(c.Dk))).to(at::kBFloat16);
    at::Tensor k = at::randn({c.BH, c.T, c.Dk}).to(at::kBFloat16), v = at::randn({c.BH, c.T, c.Dv}).to(at::kBFloat16);
    at::Tensor g =
        (at::log_sigmoid(
             at::randn(c.per_channel ? std::vector<int64_t>{c.BH, c.T, c.Dk} : std::vector<int64_t>{c.BH, c.T}) + 3.0) /
         4.0)
            .contiguous();
    at::Tensor s0 = (at::randn({c.BH, c.Dk, c.Dv}) * 0.5).contiguous();
    at::Tensor out = at::full({c.BH, c.T, c.Dv}, std::nan(""), at::kBFloat16);
    at::Tensor states = at::full({c.BH, N, c.Dk, c.Dv}, std::nan(""), at::kBFloat16);
    at::Tensor final_state = at::full({c.BH, c.Dk, c.Dv}, std::nan(""), at::kFloat);
    const cuda_emu::ChunkShape shape{static_cast<int>(c.BH), static_cast<int>(c.T), static_cast<int>(c.Dk),
                                     static_cast<int>(c.Dv), c.per_channel};
    ASSERT_TRUE(cuda_emu::GlaTwoPhaseForward(shape, c.sequential, Bits(q), Bits(k), Bits(v), g.data_ptr<float>(),
                                             s0.data_ptr<float>(), Bits(out), Bits(states),
                                             final_state.data_ptr<float>()));
    auto f64 = [&](const at::Tensor& t) { return t.to(at::kDouble).unsqueeze(0).clone().requires_grad_(); };
    std::vector<at::Tensor> leaves = {f64(q), f64(k), f64(v), f64(g), f64(s0)};
    kernels::LinearAttentionResult ref =
        kernels::GatedLinearAttentionChunkedReference(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4]);
    EXPECT_LE(RelErr(out.unsqueeze(0), ref.output.detach()), 2e-2);
    EXPECT_LE(RelErr(final_state.unsqueeze(0), ref.final_state.detach()), 2e-2);

    at::Tensor dout = at::randn({c.BH, c.T, c.Dv}).to(at::kBFloat16);
    at::Tensor dfinal = (at::randn({c.BH, c.Dk, c.Dv}) * 0.1).contiguous();
    ((ref.output * dout.to(at::kDouble).unsqueeze(0)).sum() +
     (ref.final_state * dfinal.to(at::kDouble).unsqueeze(0)).sum())
        .backward();
    at::Tensor dq = at::full_like(q, std::nan("")), dk = at::full_like(k, std::nan("")),
               dv = at::full_like(v, std::nan(""));
    at::Tensor dgamma = at::full(g.sizes(), std::nan(""), at::kFloat);
    at::Tensor chunk_sums = at::full({c.BH, N, c.Dk}, std::nan(""), at::kFloat);
    at::Tensor dinitial = at::full({c.BH, c.Dk, c.Dv}, std::nan(""), at::kFloat);
    ASSERT_TRUE(cuda_emu::GlaTwoPhaseBackward(
        shape, c.sequential, Bits(q), Bits(k), Bits(v), g.data_ptr<float>(), Bits(dout), Bits(states),
        dfinal.data_ptr<float>(), Bits(dq), Bits(dk), Bits(dv), dgamma.data_ptr<float>(),
        c.per_channel ? chunk_sums.data_ptr<float>() : nullptr, dinitial.data_ptr<float>()));
    const std::vector<at::Tensor> got = {
        dq, dk, dv, DecayGrad(dgamma, chunk_sums, final_state, dfinal, c.per_channel, c.T, C), dinitial};
    const char* names[] = {"dq", "dk", "dv", "dg", "ds0"};
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_TRUE(AllFinite(got[i])) << names[i];
      EXPECT_LE(RelErr(got[i].unsqueeze(0), leaves[i].grad()), 4e-2) << names[i];
    }
  }
}

// The gated delta rule's forward kernels (preparation, state scan, output) and the fp32 recurrences of its backward.
TEST(CudaEmulation, GatedDeltaRuleKernelsMatchFloat64) {
  for (int64_t Dk : {64, 128}) {
    const uint64_t seed = FreshSeed();
    SCOPED_TRACE("seed " + std::to_string(seed) + " Dk" + std::to_string(Dk));
    const int64_t BH = 2, T = 128, Dv = 64;
    at::Tensor q = (at::randn({BH, T, Dk}) / std::sqrt(static_cast<double>(Dk))).to(at::kBFloat16);
    at::Tensor kf = at::randn({BH, T, Dk});
    at::Tensor k = (kf / kf.norm(2, -1, true)).to(at::kBFloat16), v = at::randn({BH, T, Dv}).to(at::kBFloat16);
    at::Tensor g = at::log_sigmoid(at::randn({BH, T}) + 3.0).contiguous();
    at::Tensor beta = at::sigmoid(at::randn({BH, T})).contiguous();
    at::Tensor s0 = (at::randn({BH, Dk, Dv}) * 0.5).contiguous();
    at::Tensor out = at::full({BH, T, Dv}, std::nan(""), at::kBFloat16);
    at::Tensor final_state = at::full({BH, Dk, Dv}, std::nan(""), at::kFloat);
    ASSERT_TRUE(cuda_emu::GdnForward(
        {static_cast<int>(BH), static_cast<int>(T), static_cast<int>(Dk), static_cast<int>(Dv), false}, Bits(q),
        Bits(k), Bits(v), g.data_ptr<float>(), beta.data_ptr<float>(), s0.data_ptr<float>(), Bits(out),
        final_state.data_ptr<float>()));
    auto f64 = [](const at::Tensor& t) { return t.to(at::kDouble).unsqueeze(0); };
    kernels::LinearAttentionResult ref =
        kernels::GatedDeltaRuleChunkedReference(f64(q), f64(k), f64(v), f64(g), f64(beta), f64(s0));
    EXPECT_LE(RelErr(out.unsqueeze(0), ref.output), 2e-2);
    EXPECT_LE(RelErr(final_state.unsqueeze(0), ref.final_state), 2e-2);
  }
  // The recurrence kernel of the backward, both directions, against its contract in float64.
  for (bool reverse : {false, true}) {
    const uint64_t seed = FreshSeed();
    SCOPED_TRACE(std::string("recurrence seed ") + std::to_string(seed) + (reverse ? " reverse" : ""));
    const int64_t BH = 2, N = 3, C = 16, DK = 32, DV = 24;
    at::Tensor X = at::randn({BH, N, C, DK}) * 0.3, Y = at::randn({BH, N, C, DK}) * 0.3;
    at::Tensor Z = at::randn({BH, N, C, DK}) * 0.3, P = at::randn({BH, N, C, DV}), R = at::randn({BH, N, C, DV});
    at::Tensor gamma = -at::rand({BH, N}), s_in = at::randn({BH, DK, DV});
    at::Tensor states = at::full({BH, N, DK, DV}, std::nan("")), corrected = at::full({BH, N, C, DV}, std::nan(""));
    at::Tensor s_out = at::full({BH, DK, DV}, std::nan(""));
    ASSERT_TRUE(cuda_emu::GdnChunkRecurrence(BH, N, C, DK, DV, reverse, X.data_ptr<float>(), Y.data_ptr<float>(),
                                             P.data_ptr<float>(), Z.data_ptr<float>(), R.data_ptr<float>(),
                                             gamma.data_ptr<float>(), s_in.data_ptr<float>(), states.data_ptr<float>(),
                                             corrected.data_ptr<float>(), s_out.data_ptr<float>()));
    const double sx = reverse ? 1 : -1, sy = reverse ? -1 : 1;
    at::Tensor S = s_in.to(at::kDouble);
    at::Tensor want_states = at::empty({BH, N, DK, DV}, at::kDouble), want_c = at::empty({BH, N, C, DV}, at::kDouble);
    for (int64_t step = 0; step < N; ++step) {
      const int64_t n = reverse ? N - 1 - step : step;
      want_states.select(1, n).copy_(S);
      at::Tensor cn = P.select(1, n).to(at::kDouble) + sx * at::matmul(X.select(1, n).to(at::kDouble), S);
      want_c.select(1, n).copy_(cn);
      S = gamma.select(1, n).to(at::kDouble).exp().view({BH, 1, 1}) * S +
          sy * at::matmul(Y.select(1, n).to(at::kDouble).transpose(1, 2), cn) +
          at::matmul(Z.select(1, n).to(at::kDouble).transpose(1, 2), R.select(1, n).to(at::kDouble));
    }
    EXPECT_LE(RelErr(states, want_states), 1e-5);
    EXPECT_LE(RelErr(corrected, want_c), 1e-5);
    EXPECT_LE(RelErr(s_out, S), 1e-5);
  }
}

// Decoding's token-by-token recurrence (fp32; GLA scalar and per channel, the gated delta rule) and the gate mix
// with its backward.
TEST(CudaEmulation, RecurrentStepAndGateMixMatchFloat64) {
  FreshSeed();
  const int64_t BH = 3, T = 5, DK = 48, DV = 40;
  for (int kind = 0; kind < 3; ++kind) {
    SCOPED_TRACE(kind == 0 ? "gla scalar" : kind == 1 ? "gla per channel" : "gated delta rule");
    at::Tensor q = at::randn({BH, T, DK}) * 0.2, k = at::randn({BH, T, DK}), v = at::randn({BH, T, DV});
    if (kind == 2) k = k / k.norm(2, -1, true);
    at::Tensor g =
        kind == 1 ? at::log_sigmoid(at::randn({BH, T, DK}) + 2.0) : at::log_sigmoid(at::randn({BH, T}) + 2.0);
    at::Tensor beta = at::sigmoid(at::randn({BH, T}));
    at::Tensor state = at::randn({BH, DK, DV}), out = at::full({BH, T, DV}, std::nan(""));
    at::Tensor state0 = state.clone();
    ASSERT_TRUE(cuda_emu::RecurrentStep(
        BH, T, DK, DV, kind == 1, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), g.data_ptr<float>(),
        kind == 2 ? beta.data_ptr<float>() : nullptr, state.data_ptr<float>(), out.data_ptr<float>()));
    auto f64 = [](const at::Tensor& t) { return t.to(at::kDouble).unsqueeze(0); };
    kernels::LinearAttentionResult ref =
        kind == 2 ? kernels::GatedDeltaRuleRecurrentReference(f64(q), f64(k), f64(v), f64(g), f64(beta), f64(state0))
                  : kernels::GatedLinearAttentionRecurrentReference(f64(q), f64(k), f64(v), f64(g), f64(state0));
    EXPECT_LE(RelErr(out.unsqueeze(0), ref.output), 1e-5);
    EXPECT_LE(RelErr(state.unsqueeze(0), ref.final_state), 1e-5);
  }
  const int64_t rows = 37, H = 3, D = 16;
  at::Tensor full = at::randn({rows, H * D}).to(at::kBFloat16), linear = at::randn({rows, H * D}).to(at::kBFloat16);
  at::Tensor a = at::rand({H}), dy = at::randn({rows, 2 * H * D}).to(at::kBFloat16);
  at::Tensor out = at::full({rows, 2 * H * D}, std::nan(""), at::kBFloat16);
  ASSERT_TRUE(cuda_emu::GateMix(rows, H, D, Bits(full), Bits(linear), a.data_ptr<float>(), Bits(out)));
  at::Tensor a_cols = a.to(at::kDouble).repeat_interleave(D);
  at::Tensor want = at::cat({full.to(at::kDouble) * a_cols, linear.to(at::kDouble) * (1 - a_cols)}, 1);
  EXPECT_LE(RelErr(out, want), 8e-3);
  at::Tensor d_full = at::full_like(full, std::nan("")), d_linear = at::full_like(full, std::nan(""));
  at::Tensor d_a = at::full({H}, std::nan(""));
  ASSERT_TRUE(cuda_emu::GateMixBackward(rows, H, D, Bits(full), Bits(linear), a.data_ptr<float>(), Bits(dy),
                                        Bits(d_full), Bits(d_linear), d_a.data_ptr<float>()));
  at::Tensor dy64 = dy.to(at::kDouble), dy_f = dy64.narrow(1, 0, H * D), dy_l = dy64.narrow(1, H * D, H * D);
  EXPECT_LE(RelErr(d_full, dy_f * a_cols), 8e-3);
  EXPECT_LE(RelErr(d_linear, dy_l * (1 - a_cols)), 8e-3);
  at::Tensor want_da =
      (dy_f * full.to(at::kDouble) - dy_l * linear.to(at::kDouble)).view({rows, H, D}).sum(at::IntArrayRef{0, 2});
  EXPECT_LE(RelErr(d_a, want_da), 1e-4);
}

TEST(CudaEmulation, SegmentedStatePassesMatchFloat64) {
  for (const Case& c : std::vector<Case>{{1, 2, 320, 128, 128, 2, false}, {2, 1, 256, 64, 128, 3, true}})
    CheckStatePasses(c);
}

}  // namespace
}  // namespace fm
