// fm::kernels linear-attention ops (chunked and recurrent) against a float64 token-by-token evaluation of the
// recurrences in docs/ENGINE.md §1, written here with plain loops over t: outputs and final states across sequence
// lengths, chunk sizes, decay strengths, scalar/per-channel decays, initial states and dtypes; prefill-then-decode;
// autograd gradients of the chunked form against the recurrent form; argument checks.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include "kernels/gdn_backward.h"
#include "kernels/linear_attention.h"

namespace fm {
namespace {

using kernels::LinearAttentionResult;

enum class Decay { kStrong, kWeak, kGla };
const char* DecayName(Decay d) { return d == Decay::kStrong ? "strong" : d == Decay::kWeak ? "weak" : "gla"; }

struct Shape {
  int64_t B, H, T, Dk, Dv;
};

// Float64 CPU inputs of one case. `g` is [B, H, T] or [B, H, T, Dk]; `beta` is set for the delta rule.
struct Inputs {
  at::Tensor q, k, v, g, beta, init;
};

Inputs MakeInputs(uint64_t seed, Shape s, bool per_channel, Decay decay, bool with_init, bool delta) {
  at::manual_seed(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  Inputs in;
  in.q = at::randn({s.B, s.H, s.T, s.Dk}, f64) / std::sqrt(static_cast<double>(s.Dk));
  in.k = at::randn({s.B, s.H, s.T, s.Dk}, f64);
  in.v = at::randn({s.B, s.H, s.T, s.Dv}, f64);
  if (delta) {  // the GDN branch feeds l2-normalised keys (ENGINE.md §1); unnormalised keys make the rule unstable
    in.k = in.k / in.k.pow(2).sum(-1, true).add(1e-6).sqrt();
    in.beta = at::sigmoid(at::randn({s.B, s.H, s.T}, f64));
  }
  std::vector<int64_t> g_shape = {s.B, s.H, s.T};
  if (per_channel) g_shape.push_back(s.Dk);
  switch (decay) {
    case Decay::kStrong:
      in.g = -20 * at::rand(g_shape, f64);
      break;  // down to -20 a step
    case Decay::kWeak:
      in.g = -2e-4 * at::rand(g_shape, f64);
      break;  // ~ -1e-4 a step
    case Decay::kGla:
      in.g = at::log_sigmoid(3 * at::randn(g_shape, f64)) / 16;
      break;  // ENGINE.md's GLA
  }
  if (with_init) in.init = at::randn({s.B, s.H, s.Dk, s.Dv}, f64);
  return in;
}

// The same inputs rounded to `dtype` (the initial state stays float32 or float64).
Inputs Cast(const Inputs& in, at::ScalarType dtype) {
  auto c = [&](const at::Tensor& t) { return t.defined() ? t.to(dtype) : t; };
  Inputs out{c(in.q), c(in.k), c(in.v), c(in.g), c(in.beta), in.init};
  if (in.init.defined() && dtype != at::kDouble) out.init = in.init.to(at::kFloat);
  return out;
}

// The definition, token by token in float64: gated linear attention (beta undefined) or the gated delta rule.
LinearAttentionResult Reference(const Inputs& raw) {
  const at::Tensor q = raw.q.to(at::kDouble).contiguous(), k = raw.k.to(at::kDouble).contiguous(),
                   v = raw.v.to(at::kDouble).contiguous(), g = raw.g.to(at::kDouble).contiguous();
  const bool delta = raw.beta.defined();
  const at::Tensor beta = delta ? raw.beta.to(at::kDouble).contiguous() : at::Tensor();
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3), Dv = v.size(3);
  const bool per_channel = g.dim() == 4;
  at::Tensor state = raw.init.defined() ? raw.init.to(at::kDouble).clone() : at::zeros({B, H, Dk, Dv}, at::kDouble);
  at::Tensor out = at::zeros({B, H, T, Dv}, at::kDouble);
  auto qa = q.accessor<double, 4>(), ka = k.accessor<double, 4>(), va = v.accessor<double, 4>();
  auto sa = state.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  std::vector<double> u(Dv);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      auto S = sa[b][h];
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < Dk; ++i) {
          const double log_decay = per_channel ? g.accessor<double, 4>()[b][h][t][i] : g.accessor<double, 3>()[b][h][t];
          for (int64_t j = 0; j < Dv; ++j) S[i][j] *= std::exp(log_decay);
        }
        if (delta) {  // S += beta k (v - S'^T k)^T
          for (int64_t j = 0; j < Dv; ++j) {
            double sk = 0;
            for (int64_t i = 0; i < Dk; ++i) sk += S[i][j] * ka[b][h][t][i];
            u[j] = beta.accessor<double, 3>()[b][h][t] * (va[b][h][t][j] - sk);
          }
        } else {
          for (int64_t j = 0; j < Dv; ++j) u[j] = va[b][h][t][j];
        }
        for (int64_t i = 0; i < Dk; ++i) {
          for (int64_t j = 0; j < Dv; ++j) S[i][j] += ka[b][h][t][i] * u[j];
        }
        for (int64_t j = 0; j < Dv; ++j) {
          double o = 0;
          for (int64_t i = 0; i < Dk; ++i) o += S[i][j] * qa[b][h][t][i];
          oa[b][h][t][j] = o;
        }
      }
    }
  }
  return {out, state};
}

LinearAttentionResult Chunked(const Inputs& in, int64_t chunk) {
  return in.beta.defined() ? kernels::GatedDeltaRuleChunked(in.q, in.k, in.v, in.g, in.beta, in.init, chunk)
                           : kernels::GatedLinearAttentionChunked(in.q, in.k, in.v, in.g, in.init, chunk);
}

LinearAttentionResult Recurrent(const Inputs& in) {
  return in.beta.defined() ? kernels::GatedDeltaRuleRecurrent(in.q, in.k, in.v, in.g, in.beta, in.init)
                           : kernels::GatedLinearAttentionRecurrent(in.q, in.k, in.v, in.g, in.init);
}

// max |got - want| / max |want|.
double RelErr(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor w = want.to(at::kDouble).cpu();
  const double scale = std::max(w.abs().max().item<double>(), 1e-30);
  return (got.to(at::kDouble).cpu() - w).abs().max().item<double>() / scale;
}

bool AllFinite(const at::Tensor& t) { return at::isfinite(t).all().item<bool>(); }

// Checks a result against the reference: dtypes, shapes, finiteness, relative errors of output and final state.
void ExpectMatches(const LinearAttentionResult& got, const LinearAttentionResult& want, at::ScalarType out_dtype,
                   double tol, const std::string& what) {
  const at::ScalarType state_dtype = out_dtype == at::kDouble ? at::kDouble : at::kFloat;
  ASSERT_EQ(got.output.scalar_type(), out_dtype) << what;
  ASSERT_EQ(got.final_state.scalar_type(), state_dtype) << what;
  ASSERT_EQ(got.output.sizes(), want.output.sizes()) << what;
  ASSERT_EQ(got.final_state.sizes(), want.final_state.sizes()) << what;
  EXPECT_TRUE(AllFinite(got.output)) << what;
  EXPECT_TRUE(AllFinite(got.final_state)) << what;
  EXPECT_LE(RelErr(got.output, want.output), tol) << "output, " << what;
  EXPECT_LE(RelErr(got.final_state, want.final_state), tol) << "final state, " << what;
}

std::string Describe(bool delta, Shape s, bool per_channel, Decay decay, bool init, int64_t chunk) {
  return std::string(delta         ? "delta"
                     : per_channel ? "gla/vector"
                                   : "gla/scalar") +
         " T=" + std::to_string(s.T) + " chunk=" + std::to_string(chunk) + " decay=" + DecayName(decay) +
         (init ? " init" : " zero-init");
}

// Every combination the brief lists, in one dtype; the recurrent form is checked once per case (it has no chunk).
void SweepAgainstReference(bool delta, at::ScalarType dtype, double tol) {
  const Shape base{2, 2, 0, 8, 12};
  uint64_t seed = 1000 * (delta ? 2 : 1) + static_cast<uint64_t>(dtype);
  for (int64_t T : {1, 7, 64, 100, 130}) {
    for (bool per_channel : delta ? std::vector<bool>{false} : std::vector<bool>{false, true}) {
      for (Decay decay : {Decay::kStrong, Decay::kWeak, Decay::kGla}) {
        for (bool init : {true, false}) {
          Shape s = base;
          s.T = T;
          const Inputs in = Cast(MakeInputs(++seed, s, per_channel, decay, init, delta), dtype);
          const LinearAttentionResult want = Reference(in);  // from the rounded inputs
          for (int64_t chunk : {64, 16, 40, 6}) {
            ExpectMatches(Chunked(in, chunk), want, dtype, tol, Describe(delta, s, per_channel, decay, init, chunk));
          }
          ExpectMatches(Recurrent(in), want, dtype, tol,
                        "recurrent " + Describe(delta, s, per_channel, decay, init, 0));
        }
      }
    }
  }
}

TEST(LinearAttention, GatedLinearMatchesReferenceFloat64) { SweepAgainstReference(false, at::kDouble, 1e-10); }
TEST(LinearAttention, GatedDeltaMatchesReferenceFloat64) { SweepAgainstReference(true, at::kDouble, 1e-10); }
TEST(LinearAttention, GatedLinearMatchesReferenceFloat32) { SweepAgainstReference(false, at::kFloat, 1e-4); }
TEST(LinearAttention, GatedDeltaMatchesReferenceFloat32) { SweepAgainstReference(true, at::kFloat, 1e-4); }

// bf16/f16 inputs: math in float32, output rounded to the input dtype (relative step 2^-8 for bf16, 2^-11 for f16).
TEST(LinearAttention, HalfPrecisionInputs) {
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    const double tol = dtype == at::kBFloat16 ? 1e-2 : 2e-3;
    for (bool delta : {false, true}) {
      for (bool per_channel : delta ? std::vector<bool>{false} : std::vector<bool>{false, true}) {
        for (Decay decay : {Decay::kStrong, Decay::kGla}) {
          const Shape s{2, 3, 130, 16, 24};
          const Inputs in = Cast(MakeInputs(7 + static_cast<int>(decay), s, per_channel, decay, true, delta), dtype);
          const LinearAttentionResult want = Reference(in);
          const std::string what =
              std::string(c10::toString(dtype)) + " " + Describe(delta, s, per_channel, decay, true, 64);
          ExpectMatches(Chunked(in, 64), want, dtype, tol, what);
          ExpectMatches(Recurrent(in), want, dtype, tol, "recurrent " + what);
        }
      }
    }
  }
}

// Prefill with the chunked form, then decode one token at a time with the recurrent form, carrying the state.
TEST(LinearAttention, PrefillThenDecodeEqualsOnePass) {
  for (at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    const double tol = dtype == at::kDouble ? 1e-10 : 1e-4;
    for (int kind = 0; kind < 3; ++kind) {  // gla/scalar, gla/vector, delta
      const bool delta = kind == 2, per_channel = kind == 1;
      const Shape s{2, 2, 100, 8, 12};
      const Inputs all = Cast(MakeInputs(40 + kind, s, per_channel, Decay::kGla, true, delta), dtype);
      const LinearAttentionResult one_pass = Chunked(all, 16);
      ExpectMatches(one_pass, Reference(all), dtype, tol, "one pass");
      for (int64_t prefill : {0, 1, 37, 64, 99}) {
        auto slice = [&](int64_t from, int64_t len, const at::Tensor& state) {
          auto n = [&](const at::Tensor& t) { return t.defined() ? t.narrow(2, from, len) : t; };
          return Inputs{n(all.q), n(all.k), n(all.v), n(all.g), n(all.beta), state};
        };
        LinearAttentionResult first = Chunked(slice(0, prefill, all.init), 16);
        std::vector<at::Tensor> outs = {first.output};
        at::Tensor state = first.final_state;
        for (int64_t t = prefill; t < s.T; ++t) {
          LinearAttentionResult step = Recurrent(slice(t, 1, state));
          outs.push_back(step.output);
          state = step.final_state;
        }
        const std::string what = Describe(delta, s, per_channel, Decay::kGla, true, 16) + " prefill " +
                                 std::to_string(prefill) + " " + c10::toString(dtype);
        ExpectMatches({at::cat(outs, 2), state}, one_pass, dtype, tol, what);
      }
    }
  }
}

// d(loss)/d(every input) through autograd, chunked vs recurrent, float64.
TEST(LinearAttention, ChunkedGradientsEqualRecurrentGradients) {
  for (int kind = 0; kind < 3; ++kind) {
    for (Decay decay : {Decay::kStrong, Decay::kGla}) {
      for (int64_t chunk : {16, 64, 6}) {
        const bool delta = kind == 2, per_channel = kind == 1;
        const Shape s{1, 2, 37, 5, 6};
        const Inputs base = MakeInputs(70 + kind, s, per_channel, decay, true, delta);
        at::manual_seed(99);
        const at::Tensor w_out = at::randn({s.B, s.H, s.T, s.Dv}, at::kDouble);
        const at::Tensor w_state = at::randn({s.B, s.H, s.Dk, s.Dv}, at::kDouble);
        auto grads = [&](bool chunked) {
          auto leaf = [](const at::Tensor& t) { return t.defined() ? t.detach().clone().requires_grad_(true) : t; };
          Inputs in{leaf(base.q), leaf(base.k), leaf(base.v), leaf(base.g), leaf(base.beta), leaf(base.init)};
          LinearAttentionResult r = chunked ? Chunked(in, chunk) : Recurrent(in);
          ((r.output * w_out).sum() + (r.final_state * w_state).sum()).backward();
          std::vector<at::Tensor> out = {in.q.grad(), in.k.grad(), in.v.grad(), in.g.grad(), in.init.grad()};
          if (delta) out.push_back(in.beta.grad());
          return out;
        };
        const std::vector<at::Tensor> want = grads(false), got = grads(true);
        const char* names[] = {"q", "k", "v", "g", "initial_state", "beta"};
        for (size_t i = 0; i < want.size(); ++i) {
          const std::string what =
              std::string("grad ") + names[i] + " " + Describe(delta, s, per_channel, decay, true, chunk);
          ASSERT_TRUE(want[i].defined() && got[i].defined()) << what;
          EXPECT_TRUE(AllFinite(got[i])) << what;
          EXPECT_LE((got[i] - want[i]).abs().max().item<double>(),
                    1e-8 * std::max(1.0, want[i].abs().max().item<double>()))
              << what;
        }
      }
    }
  }
}

// The explicit chunked backward of the gated delta rule (kernels/gdn_backward.h) equals autograd through the chunked
// reference, in float64: every input's gradient, with and without an initial state and a final-state gradient,
// ragged lengths, several chunk sizes and decay strengths.
TEST(LinearAttention, GatedDeltaExplicitBackwardEqualsAutograd) {
  for (Decay decay : {Decay::kStrong, Decay::kWeak, Decay::kGla}) {
    for (int64_t chunk : {16, 64, 5}) {
      for (bool with_init : {true, false}) {
        const Shape s{2, 2, 45, 6, 7};
        const Inputs base = MakeInputs(120 + chunk, s, false, decay, with_init, true);
        at::manual_seed(7 + chunk);
        const at::Tensor w_out = at::randn({s.B, s.H, s.T, s.Dv}, at::kDouble);
        const at::Tensor w_state = with_init ? at::randn({s.B, s.H, s.Dk, s.Dv}, at::kDouble) : at::Tensor();
        auto leaf = [](const at::Tensor& t) { return t.defined() ? t.detach().clone().requires_grad_(true) : t; };
        Inputs in{leaf(base.q), leaf(base.k), leaf(base.v), leaf(base.g), leaf(base.beta), leaf(base.init)};
        LinearAttentionResult r =
            kernels::GatedDeltaRuleChunkedReference(in.q, in.k, in.v, in.g, in.beta, in.init, chunk);
        at::Tensor loss = (r.output * w_out).sum();
        if (w_state.defined()) loss = loss + (r.final_state * w_state).sum();
        loss.backward();
        kernels::GatedDeltaRuleGrads got = kernels::GatedDeltaRuleChunkedBackward(
            base.q, base.k, base.v, base.g, base.beta, base.init, w_out, w_state, chunk);
        const std::vector<std::pair<const char*, std::pair<at::Tensor, at::Tensor>>> pairs = {
            {"q", {got.dq, in.q.grad()}},
            {"k", {got.dk, in.k.grad()}},
            {"v", {got.dv, in.v.grad()}},
            {"g", {got.dg, in.g.grad()}},
            {"beta", {got.dbeta, in.beta.grad()}}};
        for (const auto& [name, p] : pairs) {
          const std::string what = std::string("d") + name + " " + Describe(true, s, false, decay, with_init, chunk);
          ASSERT_EQ(p.first.sizes(), p.second.sizes()) << what;
          EXPECT_LE((p.first - p.second).abs().max().item<double>(),
                    1e-9 * std::max(1.0, p.second.abs().max().item<double>()))
              << what;
        }
        if (with_init) {
          EXPECT_LE((got.dinitial_state - in.init.grad()).abs().max().item<double>(),
                    1e-9 * std::max(1.0, in.init.grad().abs().max().item<double>()));
        }
      }
    }
  }
}

// Decays far stronger than any branch produces: still finite in float32, forward and backward.
TEST(LinearAttention, ExtremeDecaysStayFinite) {
  for (int kind = 0; kind < 3; ++kind) {
    const bool delta = kind == 2, per_channel = kind == 1;
    const Shape s{1, 2, 150, 8, 8};
    Inputs in = Cast(MakeInputs(90 + kind, s, per_channel, Decay::kStrong, true, delta), at::kFloat);
    in.g = in.g * 50;  // down to -1000 a step: exp(G) underflows within a chunk, exp(-G) would overflow
    in.q.requires_grad_(true);
    in.g.requires_grad_(true);
    LinearAttentionResult r = Chunked(in, 64);
    ExpectMatches(r, Reference(in), at::kFloat, 1e-4, Describe(delta, s, per_channel, Decay::kStrong, true, 64));
    (r.output.sum() + r.final_state.sum()).backward();
    EXPECT_TRUE(AllFinite(in.q.grad()));
    EXPECT_TRUE(AllFinite(in.g.grad()));
  }
}

// Strided views ([B, T, H, D] transposed) and T = 0 are accepted.
TEST(LinearAttention, StridedInputsAndEmptySequence) {
  const Shape s{2, 3, 50, 8, 4};
  for (bool delta : {false, true}) {
    const Inputs in = MakeInputs(5, s, !delta, Decay::kGla, true, delta);
    auto strided = [](const at::Tensor& t) {
      return t.defined() && t.dim() >= 3 ? t.transpose(1, 2).contiguous().transpose(1, 2) : t;
    };
    const Inputs view{strided(in.q), strided(in.k), strided(in.v), strided(in.g), strided(in.beta), in.init};
    ASSERT_FALSE(view.q.is_contiguous());
    ExpectMatches(Chunked(view, 16), Reference(in), at::kDouble, 1e-10, delta ? "strided delta" : "strided gla");

    auto empty = [](const at::Tensor& t) { return t.defined() ? t.narrow(2, 0, 0) : t; };
    const Inputs none{empty(in.q), empty(in.k), empty(in.v), empty(in.g), empty(in.beta), in.init};
    for (const LinearAttentionResult& r : {Chunked(none, 64), Recurrent(none)}) {
      EXPECT_EQ(r.output.sizes(), (std::vector<int64_t>{s.B, s.H, 0, s.Dv}));
      EXPECT_TRUE(at::equal(r.final_state, in.init));
    }
  }
}

void ExpectThrowsMentioning(const std::function<void()>& call, const std::string& needle) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(LinearAttention, InvalidArgumentsThrowClearErrors) {
  const Inputs in = MakeInputs(3, {1, 2, 10, 4, 6}, false, Decay::kGla, true, true);
  const at::Tensor g_vec = at::zeros({1, 2, 10, 4}, at::kDouble);
  using kernels::GatedDeltaRuleChunked;
  using kernels::GatedDeltaRuleRecurrent;
  using kernels::GatedLinearAttentionChunked;
  using kernels::GatedLinearAttentionRecurrent;
  ExpectThrowsMentioning([&] { GatedLinearAttentionChunked(in.q[0], in.k, in.v, in.g, in.init); }, "q must be");
  ExpectThrowsMentioning([&] { GatedLinearAttentionChunked(in.q, in.k.narrow(3, 0, 3), in.v, in.g, in.init); },
                         "k must be");
  ExpectThrowsMentioning([&] { GatedLinearAttentionRecurrent(in.q, in.k, in.v.narrow(2, 0, 9), in.g, in.init); },
                         "v must be");
  ExpectThrowsMentioning([&] { GatedLinearAttentionChunked(in.q, in.k, in.v, in.g.narrow(2, 0, 9), in.init); },
                         "g must be");
  ExpectThrowsMentioning([&] { GatedLinearAttentionChunked(in.q, in.k, in.v, in.g, in.init.transpose(2, 3)); },
                         "initial_state must be");
  ExpectThrowsMentioning([&] { GatedLinearAttentionChunked(in.q, in.k, in.v, in.g, in.init, 0); }, "chunk_size");
  ExpectThrowsMentioning([&] { GatedLinearAttentionChunked(in.q.to(at::kInt), in.k, in.v, in.g, in.init); },
                         "floating");
  ExpectThrowsMentioning([&] { GatedDeltaRuleChunked(in.q, in.k, in.v, g_vec, in.beta, in.init); }, "g must be");
  ExpectThrowsMentioning([&] { GatedDeltaRuleRecurrent(in.q, in.k, in.v, in.g, in.beta.unsqueeze(-1), in.init); },
                         "beta must be");
  ExpectThrowsMentioning([&] { GatedDeltaRuleChunked(in.q, in.k, in.v, in.g, at::Tensor(), in.init); }, "beta");
}

TEST(LinearAttention, CudaMatchesReference) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device in this process";
  for (int kind = 0; kind < 3; ++kind) {
    const bool delta = kind == 2, per_channel = kind == 1;
    const Shape s{2, 4, 130, 16, 24};
    const Inputs in = Cast(MakeInputs(60 + kind, s, per_channel, Decay::kGla, true, delta), at::kFloat);
    auto cuda = [](const at::Tensor& t) { return t.defined() ? t.cuda() : t; };
    const Inputs dev{cuda(in.q), cuda(in.k), cuda(in.v), cuda(in.g), cuda(in.beta), cuda(in.init)};
    const LinearAttentionResult want = Reference(in);
    for (const LinearAttentionResult& r : {Chunked(dev, 64), Recurrent(dev)}) {
      EXPECT_TRUE(r.output.is_cuda());
      ExpectMatches(r, want, at::kFloat, 1e-4, Describe(delta, s, per_channel, Decay::kGla, true, 64) + " on CUDA");
    }
  }
}

}  // namespace
}  // namespace fm
