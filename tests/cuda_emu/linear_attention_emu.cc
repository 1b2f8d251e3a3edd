// kernels/cuda/gla_chunk.cu, gdn_chunk.cu, gdn_recurrence.cu and small_ops.cu compiled for the CPU emulation (see
// CMakeLists.txt), behind emu_linear_attention.h.
#include "kernels/cuda/gdn_chunk.cu"
#include "kernels/cuda/gdn_recurrence.cu"
#include "kernels/cuda/gla_chunk.cu"
#include "kernels/cuda/small_ops.cu"

#include <vector>

#include "tests/cuda_emu/emu_linear_attention.h"

namespace cuda_emu {
namespace {

namespace kc = fm::kernels::cuda;

kc::ChunkProblem Problem(const ChunkShape& s) { return {s.BH, s.T, s.DK, s.DV, s.per_channel}; }
const __nv_bfloat16* B(const uint16_t* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }
__nv_bfloat16* B(uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); }

// One state pass, as the glue's ScanStates runs it.
bool StatePass(const kc::ChunkProblem& p, bool sequential, bool reverse, const uint16_t* a, const uint16_t* b,
               const float* g, const float* s_in, uint16_t* states, float* s_out) {
  if (sequential) return kc::LaunchGlaStateScan(p, reverse, B(a), B(b), g, s_in, B(states), s_out, nullptr) == 0;
  std::vector<float> workspace(kc::GlaStatePassWorkspaceFloats(p));
  return kc::LaunchGlaStatePass(p, reverse, B(a), B(b), g, s_in, workspace.data(), B(states), s_out, nullptr) == 0;
}

}  // namespace

bool GlaTwoPhaseForward(const ChunkShape& s, bool sequential, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                        const float* g, const float* s0, uint16_t* out, uint16_t* chunk_states, float* final_state) {
  const kc::ChunkProblem p = Problem(s);
  return StatePass(p, sequential, false, k, v, g, s0, chunk_states, final_state) &&
         kc::LaunchGlaOutput(p, B(q), B(k), B(v), g, B(chunk_states), B(out), nullptr) == cudaSuccess;
}

bool GlaTwoPhaseBackward(const ChunkShape& s, bool sequential, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                         const float* g, const uint16_t* dout, const uint16_t* chunk_states, const float* dfinal,
                         uint16_t* dq, uint16_t* dk, uint16_t* dv, float* dgamma, float* chunk_sums, float* dinitial) {
  const kc::ChunkProblem p = Problem(s);
  const int64_t N = s.T / kc::ChunkFor(s.per_channel);
  std::vector<uint16_t> dstates(static_cast<size_t>(s.BH) * N * s.DK * s.DV);
  return StatePass(p, sequential, true, q, dout, g, dfinal, dstates.data(), dinitial) &&
         kc::LaunchGlaGrad(p, B(q), B(k), B(v), g, B(dout), B(chunk_states), B(dstates.data()), B(dq), B(dk), B(dv),
                           dgamma, chunk_sums, nullptr) == cudaSuccess;
}

bool GdnForward(const ChunkShape& s, const uint16_t* q, const uint16_t* k, const uint16_t* v, const float* g,
                const float* beta, const float* s0, uint16_t* out, float* final_state) {
  const kc::ChunkProblem p = Problem(s);
  const size_t rows_k = static_cast<size_t>(s.BH) * s.T * s.DK, rows_v = static_cast<size_t>(s.BH) * s.T * s.DV;
  std::vector<uint16_t> w(rows_k), u(rows_v), corrected(rows_v);
  std::vector<uint16_t> states(static_cast<size_t>(s.BH) * (s.T / kc::kChunkScalarDecay) * s.DK * s.DV);
  return kc::LaunchGdnPrepare(p, B(k), B(v), g, beta, B(w.data()), B(u.data()), nullptr) == cudaSuccess &&
         kc::LaunchGdnStateScan(p, B(k), B(w.data()), B(u.data()), g, s0, B(states.data()), B(corrected.data()),
                                final_state, nullptr) == cudaSuccess &&
         kc::LaunchGlaOutput(p, B(q), B(k), B(corrected.data()), g, B(states.data()), B(out), nullptr) == cudaSuccess;
}

bool GdnChunkRecurrence(int BH, int N, int C, int DK, int DV, bool reverse, const float* X, const float* Y,
                        const float* P, const float* Z, const float* R, const float* gamma, const float* initial,
                        float* states, float* corrected, float* final_state) {
  return kc::LaunchGdnChunkRecurrence(BH, N, C, DK, DV, reverse, X, Y, P, Z, R, gamma, initial, states, corrected,
                                      final_state, nullptr) == cudaSuccess;
}

bool RecurrentStep(int BH, int T, int DK, int DV, bool per_channel, const float* q, const float* k, const float* v,
                   const float* g, const float* beta, float* state, float* out) {
  return kc::LaunchRecurrentStep(BH, T, DK, DV, per_channel, /*dtype_bf16=*/false, q, k, v, g, beta, state, out,
                                 nullptr) == cudaSuccess;
}

bool GateMix(int64_t rows, int H, int D, const uint16_t* full, const uint16_t* linear, const float* a, uint16_t* out) {
  return kc::LaunchGateMix(rows, H, D, B(full), B(linear), a, B(out), nullptr) == cudaSuccess;
}

bool GateMixBackward(int64_t rows, int H, int D, const uint16_t* full, const uint16_t* linear, const float* a,
                     const uint16_t* dy, uint16_t* d_full, uint16_t* d_linear, float* d_a) {
  return kc::LaunchGateMixBackward(rows, H, D, B(full), B(linear), a, B(dy), B(d_full), B(d_linear), d_a, nullptr) ==
         cudaSuccess;
}

}  // namespace cuda_emu
