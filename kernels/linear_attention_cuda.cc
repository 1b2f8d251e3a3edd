// ATen glue for the CUDA linear-attention kernels: validation, padding to whole chunks and 64/128-wide heads,
// allocation on the current stream, and torch::autograd::Function wrappers. The math lives in kernels/cuda/*.cu.
#include "kernels/linear_attention_cuda.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <vector>

#include "kernels/cuda/linear_attention_launch.h"
#include "kernels/cuda_glue.h"
#include "kernels/gdn_backward.h"

namespace fm::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace kc = fm::kernels::cuda;
using glue::Bf;
using glue::CBf;
using glue::CF;
using glue::Check;
using glue::Stream;

int64_t PaddedHead(int64_t d) { return d <= 64 ? 64 : 128; }

// Pads dim `dim` of x with zeros up to `size` (x is returned unchanged when it already has it).
at::Tensor PadDim(const at::Tensor& x, int64_t dim, int64_t size) {
  if (x.size(dim) == size) return x;
  std::vector<int64_t> pad(2 * (x.dim() - dim), 0);
  pad.back() = size - x.size(dim);  // pairs run from the last dim backwards: the final pair is `dim`'s
  return at::constant_pad_nd(x, pad, 0);
}

// Inputs of one call in the kernels' shapes: [B*H, Tp, Dkp] etc., contiguous, bf16 (g, beta fp32). With
// `v_strided`, v is the caller's tensor as it is ([B, H, T, Dv], e.g. the transposed view of a [B, T, H, Dv]
// projection) and v_rows its layout: the segmented kernels read it in place (and write dv the same way).
struct Padded {
  int64_t B = 0, H = 0, T = 0, Dk = 0, Dv = 0, Tp = 0, Dkp = 0, Dvp = 0;
  bool per_channel = false;
  at::Tensor q, k, v, g, beta, state;
  bool v_strided = false;
  kc::RowsLayout v_rows;
  kc::ChunkProblem Problem() const {
    return {static_cast<int>(B * H), static_cast<int>(Tp), static_cast<int>(Dkp), static_cast<int>(Dvp), per_channel};
  }
};

bool Aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// v can be read in place: bf16, nothing to pad, rows of unit stride starting on 16-byte boundaries, and a dense
// layout (so that a gradient of the same strides covers it exactly).
bool VInPlace(const at::Tensor& v, int64_t T, int64_t Dv) {
  return v.scalar_type() == at::kBFloat16 && T % kc::kChunkScalarDecay == 0 && PaddedHead(Dv) == Dv &&
         v.stride(3) == 1 && v.stride(0) % 8 == 0 && v.stride(1) % 8 == 0 && v.stride(2) % 8 == 0 && Aligned16(v) &&
         v.is_non_overlapping_and_dense();
}

Padded Pad(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, const at::Tensor* beta,
           const at::Tensor& state, bool allow_strided_v = false) {
  Padded p;
  p.B = q.size(0), p.H = q.size(1), p.T = q.size(2), p.Dk = q.size(3), p.Dv = v.size(3);
  p.per_channel = g.dim() == 4;
  const int64_t chunk = kc::ChunkFor(p.per_channel);
  p.Tp = (p.T + chunk - 1) / chunk * chunk;
  p.Dkp = PaddedHead(p.Dk), p.Dvp = PaddedHead(p.Dv);
  auto rows = [&](const at::Tensor& x, int64_t d, int64_t dp) {
    return PadDim(PadDim(x.to(at::kBFloat16), 3, dp), 2, p.Tp).contiguous().view({p.B * p.H, p.Tp, dp});
  };
  p.q = rows(q, p.Dk, p.Dkp);
  p.k = rows(k, p.Dk, p.Dkp);
  if (allow_strided_v && !p.per_channel && VInPlace(v, p.T, p.Dv)) {
    p.v = v;
    p.v_strided = true;
    p.v_rows = {static_cast<int>(p.H), v.stride(0), v.stride(1), v.stride(2)};
  } else {
    p.v = rows(v, p.Dv, p.Dvp);
  }
  at::Tensor gf = g.to(at::kFloat);
  if (p.per_channel) {
    p.g = PadDim(PadDim(gf, 3, p.Dkp), 2, p.Tp).contiguous().view({p.B * p.H, p.Tp, p.Dkp});
  } else {
    p.g = PadDim(gf, 2, p.Tp).contiguous().view({p.B * p.H, p.Tp});
  }
  if (beta) p.beta = PadDim(beta->to(at::kFloat), 2, p.Tp).contiguous().view({p.B * p.H, p.Tp});
  if (state.defined()) {
    p.state = PadDim(PadDim(state.to(at::kFloat), 2, p.Dkp), 3, p.Dvp).contiguous();
  }
  return p;
}

// [B*H, Tp, Dp] -> [B, H, T, D] in `dtype`.
at::Tensor Unpad(const at::Tensor& x, const Padded& p, int64_t d, at::ScalarType dtype) {
  return x.view({p.B, p.H, p.Tp, x.size(2)}).narrow(2, 0, p.T).narrow(3, 0, d).to(dtype);
}
at::Tensor UnpadState(const at::Tensor& s, const Padded& p) {
  return s.view({p.B, p.H, p.Dkp, p.Dvp}).narrow(2, 0, p.Dk).narrow(3, 0, p.Dv).contiguous();
}

// torch::autograd::Function::apply needs defined tensors: "no initial state" travels as an empty tensor.
at::Tensor StateArg(const at::Tensor& s, const at::Tensor& q) {
  return s.defined() ? s : at::empty({0}, q.options().dtype(at::kFloat));
}
at::Tensor StateOrUndefined(const at::Tensor& s) { return s.numel() == 0 ? at::Tensor() : s; }

struct GlaForwardOut {
  at::Tensor out, final_state;  // padded shapes
  at::Tensor chunk_states;      // two-phase path: [B*H, N, Dkp, Dvp] bf16 (when kept)
  at::Tensor seg_entry;         // segmented path: the segments' entering states, fp32
  int segment_chunks = 0;       // segmented path: chunks per segment (0: the two-phase path ran)
};

std::atomic<bool>& SequentialStateScanSetting() {
  static std::atomic<bool> sequential{[] {
    const char* env = std::getenv("FLASHMORPH_SEQUENTIAL_SCAN");
    return env != nullptr && env[0] == '1';
  }()};
  return sequential;
}

std::atomic<bool>& SegmentedGlaSetting() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("FLASHMORPH_GLA_SEGMENTS");
    return env == nullptr || env[0] != '0';
  }()};
  return on;
}

std::atomic<int>& GlaSegmentChunksSetting() {
  static std::atomic<int> chunks{[] {
    const char* env = std::getenv("FLASHMORPH_GLA_SEGMENT_CHUNKS");
    return env != nullptr ? std::max(0, std::atoi(env)) : 0;
  }()};
  return chunks;
}

int MultiprocessorCount() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 132;
  return count;
}

// Chunks per segment of the segmented passes: the set value, or the longest segments that still give every
// multiprocessor two blocks (one block of 8 warps runs per multiprocessor; longer segments move less through memory).
int SegmentChunks(const kc::ChunkProblem& prob) {
  if (const int set = GlaSegmentChunks(); set > 0) return set;
  static const int sms = MultiprocessorCount();
  const int64_t N = prob.T / kc::kChunkScalarDecay;
  for (int ns : {16, 8, 4, 2}) {
    if (static_cast<int64_t>(prob.BH) * ((N + ns - 1) / ns) >= 2 * sms) return ns;
  }
  return 1;
}

bool UseSegments(const Padded& p) { return !p.per_channel && SegmentedGla(); }

at::Tensor SegmentWorkspace(const Padded& p, const kc::ChunkProblem& prob, int ns) {
  return at::empty({static_cast<int64_t>(kc::GlaSegmentWorkspaceFloats(prob, ns))}, p.q.options().dtype(at::kFloat));
}
at::Tensor SegmentStates(const Padded& p, const kc::ChunkProblem& prob, int ns) {
  return at::empty({static_cast<int64_t>(kc::GlaSegmentStatesFloats(prob, ns))}, p.q.options().dtype(at::kFloat));
}

// One state pass over the chunks (forward, or reverse for the state gradients): for a scalar decay the segmented
// pass (LaunchGlaSegmentStatePass) unless SegmentedGla() is off; else the two-phase pass (LaunchGlaStatePass), or
// the sequential kernel (LaunchGlaStateScan) when SequentialStateScan().
void ScanStates(const Padded& p, const kc::ChunkProblem& prob, bool reverse, const at::Tensor& rows_a,
                const at::Tensor& rows_b, const at::Tensor& s_in, at::Tensor& states, at::Tensor& last_state) {
  const char* what = reverse ? "GlaStatePass(reverse)" : "GlaStatePass";
  if (UseSegments(p) && !SequentialStateScan()) {
    const int ns = SegmentChunks(prob);
    at::Tensor workspace = SegmentWorkspace(p, prob, ns), seg_states = SegmentStates(p, prob, ns);
    Check(kc::LaunchGlaSegmentStatePass(prob, ns, reverse, CBf(rows_a), CBf(rows_b), CF(p.g), CF(s_in),
                                        workspace.data_ptr<float>(), seg_states.data_ptr<float>(), Bf(states),
                                        last_state.data_ptr<float>(), Stream()),
          what);
    return;
  }
  if (SequentialStateScan()) {
    Check(kc::LaunchGlaStateScan(prob, reverse, CBf(rows_a), CBf(rows_b), CF(p.g), CF(s_in), Bf(states),
                                 last_state.data_ptr<float>(), Stream()),
          what);
    return;
  }
  at::Tensor workspace =
      at::empty({static_cast<int64_t>(kc::GlaStatePassWorkspaceFloats(prob))}, p.q.options().dtype(at::kFloat));
  Check(kc::LaunchGlaStatePass(prob, reverse, CBf(rows_a), CBf(rows_b), CF(p.g), CF(s_in), workspace.data_ptr<float>(),
                               Bf(states), last_state.data_ptr<float>(), Stream()),
        what);
}

// The forward pass. Segmented (scalar decay): the segments' entering states come back for the backward, no chunk
// states. Two-phase: the chunk states (the caller keeps them when a backward follows).
GlaForwardOut GlaForward(const Padded& p) {
  const kc::ChunkProblem prob = p.Problem();
  const int64_t N = p.Tp / kc::ChunkFor(p.per_channel);
  GlaForwardOut r;
  r.final_state = at::empty({p.B, p.H, p.Dkp, p.Dvp}, p.q.options().dtype(at::kFloat));
  r.out = at::empty({p.B * p.H, p.Tp, p.Dvp}, p.q.options());
  if (UseSegments(p) && !SequentialStateScan()) {
    r.segment_chunks = SegmentChunks(prob);
    at::Tensor workspace = SegmentWorkspace(p, prob, r.segment_chunks);
    r.seg_entry = SegmentStates(p, prob, r.segment_chunks);
    Check(kc::LaunchGlaSegmentForward(prob, r.segment_chunks, CBf(p.q), CBf(p.k), CBf(p.v), CF(p.g), CF(p.state),
                                      workspace.data_ptr<float>(), r.seg_entry.data_ptr<float>(), Bf(r.out),
                                      /*chunk_states=*/nullptr, r.final_state.data_ptr<float>(), Stream(),
                                      p.v_strided ? &p.v_rows : nullptr),
          "GlaSegmentForward");
    return r;
  }
  r.chunk_states = at::empty({p.B * p.H, N, p.Dkp, p.Dvp}, p.q.options());
  ScanStates(p, prob, /*reverse=*/false, p.k, p.v, p.state, r.chunk_states, r.final_state);
  Check(kc::LaunchGlaOutput(prob, CBf(p.q), CBf(p.k), CBf(p.v), CF(p.g), CBf(r.chunk_states), Bf(r.out), Stream()),
        "GlaOutput");
  return r;
}

// dg from the gradient kernel's dgamma: the reverse cumulative sum over T of q.dq - k.dk, plus <S_T, dS_T> at every
// step (its exponent holds every decay). Scalar decay: dgamma [B*H, Tp], one scan along the contiguous axis. Per
// channel: dgamma [B*H, Tp, Dkp] is already reverse-summed inside chunks; add the totals of the later chunks.
at::Tensor DecayGrad(const Padded& p, const at::Tensor& dgamma, const at::Tensor& chunk_sums,
                     const at::Tensor& final_state, const at::Tensor& grad_final) {
  at::Tensor dg;
  if (p.per_channel) {
    const int64_t N = chunk_sums.size(1), C = p.Tp / N;
    at::Tensor later = chunk_sums.flip(1).cumsum(1).flip(1) - chunk_sums;  // [B*H, N, Dkp], exclusive
    dg = (dgamma.view({p.B * p.H, N, C, p.Dkp}) + later.unsqueeze(2)).view({p.B, p.H, p.Tp, p.Dkp});
    dg = dg.narrow(2, 0, p.T).narrow(3, 0, p.Dk);
  } else {
    dg = dgamma.view({p.B, p.H, p.Tp}).narrow(2, 0, p.T).flip(2).cumsum(2).flip(2);
  }
  if (grad_final.defined()) {
    at::Tensor sd = final_state * grad_final.to(at::kFloat);  // [B, H, Dk, Dv]
    dg = dg + (p.per_channel ? sd.sum(-1).unsqueeze(2) : sd.sum({-2, -1}).unsqueeze(2));
  }
  return dg.contiguous();
}

class GlaFunction : public torch::autograd::Function<GlaFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& g, const at::Tensor& initial_state) {
    const c10::cuda::CUDAGuard guard(q.device());
    ctx->set_materialize_grads(false);
    const bool segments = g.dim() == 3 && SegmentedGla() && !SequentialStateScan();
    const Padded p = Pad(q, k, v, g, nullptr, StateOrUndefined(initial_state), /*allow_strided_v=*/segments);
    // When a backward will follow, keep what the forward found so that the backward need not pass over the chunks
    // again: the segments' entering states (fp32, 1/segment_chunks of the chunk states' count) or the chunk states
    // (bf16, [B*H, N, Dk, Dv]: twice q's size at D = 128), and the padded final state.
    const bool will_backward = q.requires_grad() || k.requires_grad() || v.requires_grad() || g.requires_grad() ||
                               initial_state.requires_grad();
    GlaForwardOut f = GlaForward(p);
    at::Tensor none = at::empty({0}, f.final_state.options());
    const at::Tensor& states = f.segment_chunks > 0 ? f.seg_entry : f.chunk_states;
    ctx->save_for_backward(
        {q, k, v, g, initial_state, will_backward ? states : none, will_backward ? f.final_state : none});
    ctx->saved_data["segment_chunks"] = static_cast<int64_t>(f.segment_chunks);
    at::Tensor final_state = UnpadState(f.final_state, p);
    return {Unpad(f.out, p, p.Dv, q.scalar_type()), final_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &g = saved[3];
    const at::Tensor initial_state = StateOrUndefined(saved[4]);
    const c10::cuda::CUDAGuard guard(q.device());
    const int ns = static_cast<int>(ctx->saved_data["segment_chunks"].toInt());
    const Padded p = Pad(q, k, v, g, nullptr, initial_state, /*allow_strided_v=*/ns > 0);
    const kc::ChunkProblem prob = p.Problem();
    at::Tensor grad_out = grads[0], grad_final = grads[1];
    if (!grad_out.defined()) grad_out = at::zeros({p.B, p.H, p.T, p.Dv}, q.options());
    at::Tensor dout = PadDim(PadDim(grad_out.to(at::kBFloat16), 3, p.Dvp), 2, p.Tp).contiguous();
    at::Tensor dfinal;
    if (grad_final.defined()) dfinal = PadDim(PadDim(grad_final.to(at::kFloat), 2, p.Dkp), 3, p.Dvp).contiguous();

    at::Tensor dgamma = at::empty(p.g.sizes(), p.g.options());
    at::Tensor states = saved[5], final_state = saved[6];
    // dv in v's own layout when the kernels read v in place (its strides: no transposing copy either way).
    at::Tensor dq = at::empty_like(p.q), dk = at::empty_like(p.k);
    at::Tensor dv = p.v_strided ? at::empty_strided(p.v.sizes(), p.v.strides(), p.v.options()) : at::empty_like(p.v);
    at::Tensor dinitial = at::empty({p.B, p.H, p.Dkp, p.Dvp}, p.q.options().dtype(at::kFloat));
    at::Tensor chunk_sums;
    if (ns > 0) {
      // Segmented: the reverse summaries give each segment's leaving-state gradient; a forward walk forms dq and a
      // reverse walk dk, dv, all from the forward's segment entering states.
      if (states.numel() == 0) {
        GlaForwardOut f = GlaForward(p);
        TORCH_CHECK(f.segment_chunks == ns, "GlaBackward: the segment setting changed since the forward");
        states = f.seg_entry, final_state = f.final_state;
      }
      at::Tensor workspace = SegmentWorkspace(p, prob, ns), dh_entry = SegmentStates(p, prob, ns);
      Check(kc::LaunchGlaSegmentBackward(prob, ns, CBf(p.q), CBf(p.k), CBf(p.v), CF(p.g), CBf(dout), CF(states),
                                         CF(dfinal), workspace.data_ptr<float>(), dh_entry.data_ptr<float>(), Bf(dq),
                                         Bf(dk), Bf(dv), dgamma.data_ptr<float>(), dinitial.data_ptr<float>(), Stream(),
                                         p.v_strided ? &p.v_rows : nullptr, p.v_strided ? &p.v_rows : nullptr),
            "GlaSegmentBackward");
    } else {
      GlaGradTwoPhase(p, prob, dout, dfinal, states, final_state, dq, dk, dv, dgamma, chunk_sums, dinitial);
    }
    at::Tensor dg;
    if (g.requires_grad()) {
      at::Tensor fs = final_state.narrow(2, 0, p.Dk).narrow(3, 0, p.Dv);
      at::Tensor df = dfinal.defined() ? dfinal.narrow(2, 0, p.Dk).narrow(3, 0, p.Dv) : at::Tensor();
      dg = DecayGrad(p, dgamma, chunk_sums, fs, df).to(g.scalar_type());
    }
    at::Tensor dinit;
    if (initial_state.defined() && initial_state.requires_grad()) {
      dinit = UnpadState(dinitial, p).to(initial_state.scalar_type());
    }
    return {Unpad(dq, p, p.Dk, q.scalar_type()), Unpad(dk, p, p.Dk, k.scalar_type()),
            p.v_strided ? dv : Unpad(dv, p, p.Dv, v.scalar_type()), dg, dinit};
  }

 private:
  // The two-phase (or sequential) path: the chunk states (kept by the forward, or recomputed; final_state with
  // them), the gradients of the states leaving each chunk (reverse pass), then the per-chunk gradient kernel.
  static void GlaGradTwoPhase(const Padded& p, const kc::ChunkProblem& prob, const at::Tensor& dout,
                              const at::Tensor& dfinal, at::Tensor& states, at::Tensor& final_state, at::Tensor& dq,
                              at::Tensor& dk, at::Tensor& dv, at::Tensor& dgamma, at::Tensor& chunk_sums,
                              at::Tensor& dinitial) {
    const int64_t N = p.Tp / kc::ChunkFor(p.per_channel);
    if (states.numel() == 0) {
      states = at::empty({p.B * p.H, N, p.Dkp, p.Dvp}, p.q.options());
      final_state = at::empty({p.B, p.H, p.Dkp, p.Dvp}, p.q.options().dtype(at::kFloat));
      ScanStates(p, prob, /*reverse=*/false, p.k, p.v, p.state, states, final_state);
    }
    at::Tensor dstates = at::empty_like(states);
    ScanStates(p, prob, /*reverse=*/true, p.q, dout, dfinal, dstates, dinitial);
    if (p.per_channel) chunk_sums = at::empty({p.B * p.H, N, p.Dkp}, p.g.options());
    Check(kc::LaunchGlaGrad(prob, CBf(p.q), CBf(p.k), CBf(p.v), CF(p.g), CBf(dout), CBf(states), CBf(dstates), Bf(dq),
                            Bf(dk), Bf(dv), dgamma.data_ptr<float>(),
                            chunk_sums.defined() ? chunk_sums.data_ptr<float>() : nullptr, Stream()),
          "GlaGrad");
  }
};

// Gated delta rule forward on the kernels (no autograd).
LinearAttentionResult GdnForward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                                 const at::Tensor& beta, const at::Tensor& initial_state) {
  const c10::cuda::CUDAGuard guard(q.device());
  const Padded p = Pad(q, k, v, g, &beta, initial_state);
  const kc::ChunkProblem prob = p.Problem();
  const int64_t N = p.Tp / kc::kChunkScalarDecay;
  at::Tensor w = at::empty_like(p.k), u = at::empty_like(p.v), corrected = at::empty_like(p.v);
  at::Tensor states = at::empty({p.B * p.H, N, p.Dkp, p.Dvp}, p.q.options());
  at::Tensor final_state = at::empty({p.B, p.H, p.Dkp, p.Dvp}, p.q.options().dtype(at::kFloat));
  at::Tensor out = at::empty_like(p.v);
  Check(kc::LaunchGdnPrepare(prob, CBf(p.k), CBf(p.v), CF(p.g), CF(p.beta), Bf(w), Bf(u), Stream()), "GdnPrepare");
  Check(kc::LaunchGdnStateScan(prob, CBf(p.k), CBf(w), CBf(u), CF(p.g), CF(p.state), Bf(states), Bf(corrected),
                               final_state.data_ptr<float>(), Stream()),
        "GdnStateScan");
  Check(kc::LaunchGlaOutput(prob, CBf(p.q), CBf(p.k), CBf(corrected), CF(p.g), CBf(states), Bf(out), Stream()),
        "GdnOutput");
  return {Unpad(out, p, p.Dv, q.scalar_type()), UnpadState(final_state, p)};
}

class GdnFunction : public torch::autograd::Function<GdnFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& g, const at::Tensor& beta, const at::Tensor& initial_state) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({q, k, v, g, beta, initial_state});
    LinearAttentionResult r = GdnForward(q, k, v, g, beta, StateOrUndefined(initial_state));
    return {r.output, r.final_state};
  }

  // The explicit chunked backward (kernels/gdn_backward.h): batched per-chunk products and two passes over the
  // chunks, in float32.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor initial_state = StateOrUndefined(saved[5]);
    const c10::cuda::CUDAGuard guard(saved[0].device());
    GatedDeltaRuleGrads r = GatedDeltaRuleChunkedBackward(saved[0], saved[1], saved[2], saved[3], saved[4],
                                                          initial_state, grads[0], grads[1], kc::kChunkScalarDecay);
    variable_list result = {r.dq.to(saved[0].scalar_type()),    r.dk.to(saved[1].scalar_type()),
                            r.dv.to(saved[2].scalar_type()),    r.dg.to(saved[3].scalar_type()),
                            r.dbeta.to(saved[4].scalar_type()), at::Tensor()};
    if (initial_state.defined()) result[5] = r.dinitial_state.to(initial_state.scalar_type());
    return result;
  }
};

class GateMixFunction : public torch::autograd::Function<GateMixFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& full, const at::Tensor& linear,
                               const at::Tensor& a, int64_t heads) {
    const c10::cuda::CUDAGuard guard(full.device());
    at::Tensor f = full.contiguous(), l = linear.contiguous(), af = a.to(at::kFloat).contiguous();
    const int64_t width = f.size(-1), rows = f.numel() / width, D = width / heads;
    std::vector<int64_t> shape(f.sizes().begin(), f.sizes().end());
    shape.back() = 2 * width;
    at::Tensor out = at::empty(shape, f.options());
    Check(kc::LaunchGateMix(rows, static_cast<int>(heads), static_cast<int>(D), CBf(f), CBf(l), af.data_ptr<float>(),
                            Bf(out), Stream()),
          "GateMix");
    ctx->save_for_backward({f, l, af});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["a_dtype"] = static_cast<int64_t>(a.scalar_type());
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &f = saved[0], &l = saved[1], &af = saved[2];
    const int64_t heads = ctx->saved_data["heads"].toInt();
    const auto a_dtype = static_cast<at::ScalarType>(ctx->saved_data["a_dtype"].toInt());
    const c10::cuda::CUDAGuard guard(f.device());
    at::Tensor dy = grads[0].to(at::kBFloat16).contiguous();
    const int64_t width = f.size(-1), rows = f.numel() / width, D = width / heads;
    at::Tensor d_full = at::empty_like(f), d_linear = at::empty_like(l);
    at::Tensor d_a = at::empty({heads}, af.options());
    Check(kc::LaunchGateMixBackward(rows, static_cast<int>(heads), static_cast<int>(D), CBf(f), CBf(l),
                                    af.data_ptr<float>(), CBf(dy), Bf(d_full), Bf(d_linear), d_a.data_ptr<float>(),
                                    Stream()),
          "GateMixBackward");
    return {d_full, d_linear, d_a.to(a_dtype), at::Tensor()};
  }
};

void CheckRecurrentInputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(RecurrentCudaSupports(q, k, v), "recurrent CUDA kernel: unsupported inputs");
}

LinearAttentionResult RecurrentCuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                                    const at::Tensor* beta, const at::Tensor& initial_state) {
  CheckRecurrentInputs(q, k, v);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3), Dv = v.size(3);
  const at::ScalarType dt = q.scalar_type();
  at::Tensor qc = q.contiguous(), kk = k.to(dt).contiguous(), vc = v.to(dt).contiguous();
  at::Tensor gc = g.to(at::kFloat).contiguous();
  at::Tensor bc = beta ? beta->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor state = initial_state.defined() ? initial_state.to(at::kFloat).clone(at::MemoryFormat::Contiguous)
                                             : at::zeros({B, H, Dk, Dv}, q.options().dtype(at::kFloat));
  at::Tensor out = at::empty({B, H, T, Dv}, q.options());
  Check(
      kc::LaunchRecurrentStep(static_cast<int>(B * H), static_cast<int>(T), static_cast<int>(Dk), static_cast<int>(Dv),
                              g.dim() == 4, dt == at::kBFloat16, qc.data_ptr(), kk.data_ptr(), vc.data_ptr(),
                              gc.data_ptr<float>(), CF(bc), state.data_ptr<float>(), out.data_ptr(), Stream()),
      "Recurrent");
  return {out, state};
}

}  // namespace

bool SetSegmentedGla(bool on) { return SegmentedGlaSetting().exchange(on); }
bool SegmentedGla() { return SegmentedGlaSetting().load(); }
int SetGlaSegmentChunks(int chunks) { return GlaSegmentChunksSetting().exchange(std::max(0, chunks)); }
int GlaSegmentChunks() { return GlaSegmentChunksSetting().load(); }
bool SetSequentialStateScan(bool on) { return SequentialStateScanSetting().exchange(on); }
bool SequentialStateScan() { return SequentialStateScanSetting().load(); }

bool LinearAttentionCudaSupports(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return q.defined() && q.is_cuda() && q.dim() == 4 && v.dim() == 4 && q.size(2) > 0 &&
         q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16 &&
         q.size(3) <= 128 && v.size(3) <= 128 && q.size(0) * q.size(1) * ((q.size(2) + 63) / 64 * 64) < (1LL << 31);
}

LinearAttentionResult GatedLinearAttentionCuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& g, const at::Tensor& initial_state) {
  TORCH_CHECK(LinearAttentionCudaSupports(q, k, v), "GatedLinearAttentionCuda: unsupported inputs");
  variable_list r = GlaFunction::apply(q, k, v, g, StateArg(initial_state, q));
  return {r[0], r[1]};
}

LinearAttentionResult GatedDeltaRuleCuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& g, const at::Tensor& beta, const at::Tensor& initial_state) {
  TORCH_CHECK(LinearAttentionCudaSupports(q, k, v), "GatedDeltaRuleCuda: unsupported inputs");
  variable_list r = GdnFunction::apply(q, k, v, g, beta, StateArg(initial_state, q));
  return {r[0], r[1]};
}

bool RecurrentCudaSupports(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::ScalarType dt = q.scalar_type();
  return q.defined() && q.is_cuda() && q.dim() == 4 && v.dim() == 4 && (dt == at::kBFloat16 || dt == at::kFloat) &&
         k.scalar_type() == dt && v.scalar_type() == dt && q.size(3) <= 256 && v.size(3) <= 256;
}

LinearAttentionResult GatedLinearAttentionRecurrentCuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                        const at::Tensor& g, const at::Tensor& initial_state) {
  return RecurrentCuda(q, k, v, g, nullptr, initial_state);
}

LinearAttentionResult GatedDeltaRuleRecurrentCuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& g, const at::Tensor& beta,
                                                  const at::Tensor& initial_state) {
  return RecurrentCuda(q, k, v, g, &beta, initial_state);
}

at::Tensor GateMixCuda(const at::Tensor& full, const at::Tensor& linear, const at::Tensor& a, int64_t heads) {
  TORCH_CHECK(full.is_cuda() && full.scalar_type() == at::kBFloat16 && linear.scalar_type() == at::kBFloat16 &&
                  full.sizes() == linear.sizes() && a.numel() == heads && full.size(-1) % heads == 0 &&
                  (full.size(-1) / heads) % 2 == 0,
              "GateMixCuda: unsupported inputs");
  return GateMixFunction::apply(full, linear, a.reshape({heads}), heads)[0];
}

}  // namespace fm::kernels
