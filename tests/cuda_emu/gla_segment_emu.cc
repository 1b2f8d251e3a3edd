// kernels/cuda/gla_segment.cu compiled for the CPU emulation (this target force-includes include/emu_prelude.h and
// puts include/ first on the include path, so the kernels' launch, shared-memory and PTX headers are the emulated
// ones), behind the CUDA-free interface of emu_gla.h.
#include "kernels/cuda/gla_segment.cu"

#include "tests/cuda_emu/emu_gla.h"

namespace cuda_emu {
namespace {

namespace kc = fm::kernels::cuda;

kc::ChunkProblem Problem(const GlaShape& s) { return {s.BH, s.T, s.DK, s.DV, false}; }
const __nv_bfloat16* B(const uint16_t* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }
__nv_bfloat16* B(uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); }

// The kernels' layout for a spec (into `storage`), or null.
const kc::RowsLayout* Rows(const RowsSpec* spec, kc::RowsLayout* storage) {
  if (spec == nullptr) return nullptr;
  *storage = {spec->H, spec->stride_b, spec->stride_h, spec->stride_t};
  return storage;
}

}  // namespace

bool GlaSegmentForward(const GlaShape& s, int ns, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                       const float* g, const float* initial_state, uint16_t* out, float* final_state,
                       std::vector<float>* seg_entry, const RowsSpec* v_rows) {
  const kc::ChunkProblem p = Problem(s);
  std::vector<float> workspace(kc::GlaSegmentWorkspaceFloats(p, ns));
  seg_entry->assign(kc::GlaSegmentStatesFloats(p, ns), 0.f);
  kc::RowsLayout vl;
  return kc::LaunchGlaSegmentForward(p, ns, B(q), B(k), B(v), g, initial_state, workspace.data(), seg_entry->data(),
                                     B(out), nullptr, final_state, nullptr, Rows(v_rows, &vl)) == cudaSuccess;
}

bool GlaSegmentBackward(const GlaShape& s, int ns, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                        const float* g, const uint16_t* dout, const std::vector<float>& seg_entry, const float* dfinal,
                        uint16_t* dq, uint16_t* dk, uint16_t* dv, float* dgamma, float* dinitial,
                        const RowsSpec* v_rows, const RowsSpec* dv_rows) {
  const kc::ChunkProblem p = Problem(s);
  std::vector<float> workspace(kc::GlaSegmentWorkspaceFloats(p, ns)), dh_entry(kc::GlaSegmentStatesFloats(p, ns));
  kc::RowsLayout vl, dvl;
  return kc::LaunchGlaSegmentBackward(p, ns, B(q), B(k), B(v), g, B(dout), seg_entry.data(), dfinal, workspace.data(),
                                      dh_entry.data(), B(dq), B(dk), B(dv), dgamma, dinitial, nullptr,
                                      Rows(v_rows, &vl), Rows(dv_rows, &dvl)) == cudaSuccess;
}

bool GlaSegmentStatePass(const GlaShape& s, int ns, bool reverse, const uint16_t* a, const uint16_t* b, const float* g,
                         const float* s_in, uint16_t* chunk_states, float* s_out) {
  const kc::ChunkProblem p = Problem(s);
  std::vector<float> workspace(kc::GlaSegmentWorkspaceFloats(p, ns)), seg(kc::GlaSegmentStatesFloats(p, ns));
  return kc::LaunchGlaSegmentStatePass(p, ns, reverse, B(a), B(b), g, s_in, workspace.data(), seg.data(),
                                       B(chunk_states), s_out, nullptr) == cudaSuccess;
}

}  // namespace cuda_emu
