// The segmented Lightning kernels of kernels/cuda/gla_segment.cu run on the CPU emulation (emu_runtime.h), behind an
// interface free of CUDA types so that LibTorch tests can drive them. Inputs as the kernels take them: bf16 as raw
// uint16 bits, contiguous [BH, T, D] rows with T a multiple of 64 and D in {64, 128}; log decays fp32 [BH, T];
// states fp32 [BH, DK, DV]. Each returns false when the launcher reports an error.
#pragma once

#include <cstdint>
#include <vector>

namespace cuda_emu {

struct GlaShape {
  int BH = 0, T = 0, DK = 0, DV = 0;
};

// A tensor's rows other than contiguous [BH, T, D] (kernels/cuda/linear_attention_launch.h, RowsLayout): row t of
// batch*head bh at (bh / H) * stride_b + (bh % H) * stride_h + t * stride_t.
struct RowsSpec {
  int H = 1;
  int64_t stride_b = 0, stride_h = 0, stride_t = 0;
};

// The fused forward: out [BH, T, DV], final_state, and the segments' entering states (for the backward).
// initial_state may be null (zeros).
// v_rows (may be null: contiguous) is v's layout, also in the backward, where dv_rows is dv's.
bool GlaSegmentForward(const GlaShape& s, int segment_chunks, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                       const float* g, const float* initial_state, uint16_t* out, float* final_state,
                       std::vector<float>* seg_entry, const RowsSpec* v_rows = nullptr);

// The fused backward from the forward's seg_entry: dq, dk, dv, dgamma [BH, T] (q.dq - k.dk per step) and the
// initial state's gradient. dfinal may be null.
bool GlaSegmentBackward(const GlaShape& s, int segment_chunks, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                        const float* g, const uint16_t* dout, const std::vector<float>& seg_entry, const float* dfinal,
                        uint16_t* dq, uint16_t* dk, uint16_t* dv, float* dgamma, float* dinitial,
                        const RowsSpec* v_rows = nullptr, const RowsSpec* dv_rows = nullptr);

// The segmented state pass (LaunchGlaSegmentStatePass): chunk_states [BH, T / 64, DK, DV] bf16 and s_out.
bool GlaSegmentStatePass(const GlaShape& s, int segment_chunks, bool reverse, const uint16_t* a, const uint16_t* b,
                         const float* g, const float* s_in, uint16_t* chunk_states, float* s_out);

}  // namespace cuda_emu
