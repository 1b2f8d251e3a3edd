// Host entry points of the CUDA linear-attention kernels (sm_90), on raw device pointers. No LibTorch: the ATen glue
// (kernels/linear_attention_cuda.cc) pads, allocates and wraps these in autograd functions.
//
// Layout: every [.., T, D] tensor is contiguous with the batch and head folded into one leading index bh in
// [0, BH). T is a multiple of the chunk (the glue pads with k = v = 0, g = 0, which changes nothing). Head sizes
// DK, DV are 64 or 128. q, k, v, do, w, u are bf16; log decays g are fp32 [BH, T] (scalar) or [BH, T, DK]
// (per key channel); states are fp32 [BH, DK, DV]; per-chunk states are bf16 [BH, N, DK, DV] with N = T / chunk.
// Every launcher returns the launch error (cudaSuccess when queued).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fm::kernels::cuda {

// Steps per chunk: 64 with a scalar decay, 32 with a per-key-channel decay (its pairwise factors are formed inside
// 16-step sub-chunks; shorter chunks keep the backward's working set in shared memory).
constexpr int kChunkScalarDecay = 64;
constexpr int kChunkPerChannel = 32;
inline int ChunkFor(bool per_channel) { return per_channel ? kChunkPerChannel : kChunkScalarDecay; }

struct ChunkProblem {
  int BH = 0, T = 0, DK = 0, DV = 0;
  bool per_channel = false;  // g is [BH, T, DK]
};

// Where row t of batch*head bh starts in a tensor of [.., T, D] rows, in elements:
// (bh / H) * stride_b + (bh % H) * stride_h + t * stride_t. Contiguous [BH, T, D] rows: H = 1, stride_b = T * D,
// stride_t = D; a [B, T, H, D] tensor: H = H, stride_b = T * H * D, stride_h = D, stride_t = H * D. Rows must start
// on 16-byte boundaries (strides multiples of 8 bf16 elements).
struct RowsLayout {
  int H = 1;
  int64_t stride_b = 0, stride_h = 0, stride_t = 0;
};
inline RowsLayout ContiguousRows(int T, int D) { return {1, static_cast<int64_t>(T) * D, 0, D}; }

// Sequential pass over chunks. Forward (reverse = false): rows_a = k, rows_b = v; writes the state entering every
// chunk to chunk_states and the state after the last chunk to final_state; initial_state may be null (zeros).
// Backward (reverse = true): rows_a = q, rows_b = do; walks the chunks last to first and writes, for every chunk,
// the gradient of the state leaving it; initial_state is the gradient of the final state (or null) and
// final_state receives the gradient of the initial state.
cudaError_t LaunchGlaStateScan(const ChunkProblem& p, bool reverse, const __nv_bfloat16* rows_a,
                               const __nv_bfloat16* rows_b, const float* g, const float* initial_state,
                               __nv_bfloat16* chunk_states, float* final_state, cudaStream_t stream);

// The same pass in two phases (what the glue runs by default): every chunk's own contribution to the state and its
// total log decay at once (tensor cores, parallel over chunks), then the elementwise recurrence over chunks with one
// thread per state element. Same results as LaunchGlaStateScan up to fp32 rounding. `workspace`: fp32 scratch of
// GlaStatePassWorkspaceFloats(p) elements.
size_t GlaStatePassWorkspaceFloats(const ChunkProblem& p);
cudaError_t LaunchGlaStatePass(const ChunkProblem& p, bool reverse, const __nv_bfloat16* rows_a,
                               const __nv_bfloat16* rows_b, const float* g, const float* initial_state,
                               float* workspace, __nv_bfloat16* chunk_states, float* final_state, cudaStream_t stream);

// Scalar decay only (kernels/cuda/gla_segment.cu): passes over segments of `segment_chunks` chunks, the state of
// each segment's walk held in registers; only per-segment summaries and entering states go through memory, in fp32.
// `workspace`: GlaSegmentWorkspaceFloats(p, segment_chunks) floats of scratch; `seg_states`, `seg_entry`,
// `dh_entry`: GlaSegmentStatesFloats(p, segment_chunks) floats each ([BH, segments, DK, DV]).
// LaunchGlaSegmentStatePass: the contract of LaunchGlaStatePass (chunk_states required; seg_states scratch).
// LaunchGlaSegmentForward: the whole forward: out (bf16 [BH, T, DV]), final_state, the segments' entering states
// (seg_entry, what the backward needs) and, when chunk_states is not null, the states entering each chunk.
// v_rows (may be null: contiguous) is v's layout; in the backward also dv's (dv_rows, may be null).
// LaunchGlaSegmentBackward: from the forward's seg_entry and do (and the final state's gradient dfinal, may be
// null): dq, dk, dv (bf16), dgamma [BH, T] = q.dq - k.dk per step (as LaunchGlaGrad's scalar case) and dinitial
// (the initial state's gradient, fp32 [BH, DK, DV]); dh_entry is scratch.
size_t GlaSegmentWorkspaceFloats(const ChunkProblem& p, int segment_chunks);
size_t GlaSegmentStatesFloats(const ChunkProblem& p, int segment_chunks);
cudaError_t LaunchGlaSegmentStatePass(const ChunkProblem& p, int segment_chunks, bool reverse,
                                      const __nv_bfloat16* rows_a, const __nv_bfloat16* rows_b, const float* g,
                                      const float* initial_state, float* workspace, float* seg_states,
                                      __nv_bfloat16* chunk_states, float* final_state, cudaStream_t stream);
cudaError_t LaunchGlaSegmentForward(const ChunkProblem& p, int segment_chunks, const __nv_bfloat16* q,
                                    const __nv_bfloat16* k, const __nv_bfloat16* v, const float* g,
                                    const float* initial_state, float* workspace, float* seg_entry, __nv_bfloat16* out,
                                    __nv_bfloat16* chunk_states, float* final_state, cudaStream_t stream,
                                    const RowsLayout* v_rows = nullptr);
cudaError_t LaunchGlaSegmentBackward(const ChunkProblem& p, int segment_chunks, const __nv_bfloat16* q,
                                     const __nv_bfloat16* k, const __nv_bfloat16* v, const float* g,
                                     const __nv_bfloat16* dout, const float* seg_entry, const float* dfinal,
                                     float* workspace, float* dh_entry, __nv_bfloat16* dq, __nv_bfloat16* dk,
                                     __nv_bfloat16* dv, float* dgamma, float* dinitial, cudaStream_t stream,
                                     const RowsLayout* v_rows = nullptr, const RowsLayout* dv_rows = nullptr);

// o = intra-chunk attention + q decayed against the state entering the chunk. Scalar or per-channel decay.
cudaError_t LaunchGlaOutput(const ChunkProblem& p, const __nv_bfloat16* q, const __nv_bfloat16* k,
                            const __nv_bfloat16* v, const float* g, const __nv_bfloat16* chunk_states,
                            __nv_bfloat16* out, cudaStream_t stream);

// Gradients of one chunked GLA pass: dq, dk, dv (bf16) and dgamma from q*dq - k*dk (fp32), whose reverse cumulative
// sum over T is dg. Scalar decay: dgamma [BH, T] holds q.dq - k.dk per step (summed over channels). Per-channel
// decay: dgamma [BH, T, DK] holds the reverse cumulative sums inside each chunk and dgamma_chunk_sums [BH, N, DK]
// (required) each chunk's total; adding the totals of the later chunks completes the sum.
// chunk_states: states entering each chunk (forward scan); chunk_dstates: gradients of the states leaving each
// chunk (reverse scan).
cudaError_t LaunchGlaGrad(const ChunkProblem& p, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                          const float* g, const __nv_bfloat16* dout, const __nv_bfloat16* chunk_states,
                          const __nv_bfloat16* chunk_dstates, __nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv,
                          float* dgamma, float* dgamma_chunk_sums, cudaStream_t stream);

// Gated delta rule, per chunk (scalar decay, chunk 64): W = (I + L)^-1 diag(beta exp(G)) K and
// U = (I + L)^-1 diag(beta) V with L_ij = beta_i exp(G_i - G_j) k_i.k_j (j < i). beta fp32 [BH, T].
cudaError_t LaunchGdnPrepare(const ChunkProblem& p, const __nv_bfloat16* k, const __nv_bfloat16* v, const float* g,
                             const float* beta, __nv_bfloat16* w, __nv_bfloat16* u, cudaStream_t stream);

// Sequential pass: for each chunk, stores the entering state, the corrected values u - W S (into `corrected`,
// bf16 [BH, T, DV]), then S <- exp(G_last) S + (k exp(G_last - G))^T corrected.
cudaError_t LaunchGdnStateScan(const ChunkProblem& p, const __nv_bfloat16* k, const __nv_bfloat16* w,
                               const __nv_bfloat16* u, const float* g, const float* initial_state,
                               __nv_bfloat16* chunk_states, __nv_bfloat16* corrected, float* final_state,
                               cudaStream_t stream);

// The sequential passes of the gated-delta-rule backward (kernels/gdn_backward.cc), in fp32 on contiguous
// [BH, N, C, DK] (X, Y, Z) and [BH, N, C, DV] (P, R, corrected) operands, gamma [BH, N], states [BH, N, DK, DV],
// initial/final states [BH, DK, DV] (initial may be null: zeros). Chunks n = 0..N-1 (N-1..0 when `reverse`): store
// the entering state S in states[n], c = P_n + sx X_n S in corrected[n] (sx = -1 forward, +1 reverse), then
// S <- exp(gamma_n) S + sy Y_n^T c + Z_n^T R_n (sy = +1 forward, -1 reverse; the Z term only when Z and R are given).
// Forward: X = W, Y = K exp(gamma - G), P = U. Reverse: X = K exp(gamma - G), Y = W, P = A^T dO, Z = Q exp(G), R = dO.
// Needs C <= 64 and DK <= 128 (GdnChunkRecurrenceSupported); any DV.
bool GdnChunkRecurrenceSupported(int C, int DK);
cudaError_t LaunchGdnChunkRecurrence(int BH, int N, int C, int DK, int DV, bool reverse, const float* X, const float* Y,
                                     const float* P, const float* Z, const float* R, const float* gamma,
                                     const float* initial_state, float* states, float* corrected, float* final_state,
                                     cudaStream_t stream);

// Token-by-token recurrence over T steps of state (fp32, [BH, DK, DV], updated in place) for decoding: GLA
// (beta == nullptr) or the gated delta rule. q, k, v, out: [BH, T, D] in `dtype_bf16 ? bf16 : fp32` (any DK, DV
// <= 256). g: [BH, T] or (GLA only) [BH, T, DK].
cudaError_t LaunchRecurrentStep(int BH, int T, int DK, int DV, bool per_channel, bool dtype_bf16, const void* q,
                                const void* k, const void* v, const float* g, const float* beta, float* state,
                                void* out, cudaStream_t stream);

// Fused gate mix feeding one concatenated output projection: out[r] = [a * full[r], (1 - a) * linear[r]] over
// [rows, H, D] inputs with one mixing weight per head (a: fp32 [H]); out is bf16 [rows, 2, H, D]. Backward:
// d_full = a * dy[:, 0], d_linear = (1 - a) * dy[:, 1], d_a[h] = sum over rows and D of
// dy[:, 0, h] * full - dy[:, 1, h] * linear (d_a is overwritten).
cudaError_t LaunchGateMix(int64_t rows, int H, int D, const __nv_bfloat16* full, const __nv_bfloat16* linear,
                          const float* a, __nv_bfloat16* out, cudaStream_t stream);
cudaError_t LaunchGateMixBackward(int64_t rows, int H, int D, const __nv_bfloat16* full, const __nv_bfloat16* linear,
                                  const float* a, const __nv_bfloat16* dy, __nv_bfloat16* d_full,
                                  __nv_bfloat16* d_linear, float* d_a, cudaStream_t stream);

}  // namespace fm::kernels::cuda
