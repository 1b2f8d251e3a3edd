// The other linear-attention kernels (kernels/cuda/gla_chunk.cu, gdn_chunk.cu, gdn_recurrence.cu, small_ops.cu) on
// the CPU emulation (emu_runtime.h), behind an interface free of CUDA types, each run the way the ATen glue
// (kernels/linear_attention_cuda.cc) runs them. bf16 as raw uint16 bits; contiguous [BH, T, D] rows with T a
// multiple of the chunk (64; 32 with a per-channel decay) and D in {64, 128}; g fp32 [BH, T] or [BH, T, DK];
// states fp32 [BH, DK, DV] (s0 and dfinal may be null). Each returns false when a launcher reports an error.
#pragma once

#include <cstdint>

namespace cuda_emu {

struct ChunkShape {
  int BH = 0, T = 0, DK = 0, DV = 0;
  bool per_channel = false;
};

// GLA forward on the two-phase state pass (or, with `sequential`, the sequential scan kernel) and the output
// kernel: out, the states entering every chunk (bf16 [BH, T / chunk, DK, DV]) and the final state.
bool GlaTwoPhaseForward(const ChunkShape& s, bool sequential, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                        const float* g, const float* s0, uint16_t* out, uint16_t* chunk_states, float* final_state);
// Its backward: the reverse state pass, then the gradient kernel (dgamma and, per channel, chunk_sums as
// LaunchGlaGrad writes them) and the initial state's gradient.
bool GlaTwoPhaseBackward(const ChunkShape& s, bool sequential, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                         const float* g, const uint16_t* dout, const uint16_t* chunk_states, const float* dfinal,
                         uint16_t* dq, uint16_t* dk, uint16_t* dv, float* dgamma, float* chunk_sums, float* dinitial);
// Gated delta rule forward (scalar decay, chunk 64): preparation, state scan, output. beta fp32 [BH, T].
bool GdnForward(const ChunkShape& s, const uint16_t* q, const uint16_t* k, const uint16_t* v, const float* g,
                const float* beta, const float* s0, uint16_t* out, float* final_state);
// LaunchGdnChunkRecurrence (fp32; Z and R may be null).
bool GdnChunkRecurrence(int BH, int N, int C, int DK, int DV, bool reverse, const float* X, const float* Y,
                        const float* P, const float* Z, const float* R, const float* gamma, const float* initial,
                        float* states, float* corrected, float* final_state);
// LaunchRecurrentStep in fp32 (state updated in place); beta null for GLA.
bool RecurrentStep(int BH, int T, int DK, int DV, bool per_channel, const float* q, const float* k, const float* v,
                   const float* g, const float* beta, float* state, float* out);
bool GateMix(int64_t rows, int H, int D, const uint16_t* full, const uint16_t* linear, const float* a, uint16_t* out);
bool GateMixBackward(int64_t rows, int H, int D, const uint16_t* full, const uint16_t* linear, const float* a,
                     const uint16_t* dy, uint16_t* d_full, uint16_t* d_linear, float* d_a);

}  // namespace cuda_emu
