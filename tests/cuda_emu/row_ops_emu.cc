// kernels/cuda/row_ops.cu compiled for the CPU emulation (see CMakeLists.txt), behind emu_row_ops.h.
#include "kernels/cuda/row_ops.cu"

#include "tests/cuda_emu/emu_row_ops.h"

namespace cuda_emu {
namespace {

namespace kc = fm::kernels::cuda;

const __nv_bfloat16* B(const uint16_t* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }
__nv_bfloat16* B(uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); }

kc::HeadRows Rows(const HeadRowsLayout& r) {
  kc::HeadRows out;
  out.B = r.B, out.T = r.T, out.H = r.H, out.D = r.D;
  out.stride_b = r.stride_b, out.stride_t = r.stride_t, out.stride_h = r.stride_h;
  return out;
}

kc::HeadTransformArgs Args(const HeadOptions& o) {
  kc::HeadTransformArgs a;
  a.weight = B(o.weight);
  a.unit_norm = o.unit_norm;
  a.eps = o.eps;
  a.cos = B(o.cos);
  a.sin = B(o.sin);
  a.silu = o.silu;
  a.l2 = o.l2;
  a.scale = o.scale;
  a.vectorized = o.vectorized;
  return a;
}

}  // namespace

bool HeadTransform(const HeadRowsLayout& in, const HeadRowsLayout& out, const HeadOptions& options, const uint16_t* x,
                   uint16_t* y) {
  return kc::LaunchHeadTransform(Rows(in), Rows(out), Args(options), B(x), B(y), nullptr) == cudaSuccess;
}

bool HeadTransformBackward(const HeadRowsLayout& x_rows, const HeadRowsLayout& dy_rows, const HeadRowsLayout& dx_rows,
                           const HeadOptions& options, const uint16_t* x, const uint16_t* dy, uint16_t* dx,
                           float* dweight) {
  return kc::LaunchHeadTransformBackward(Rows(x_rows), Rows(dy_rows), Rows(dx_rows), Args(options), B(x), B(dy), B(dx),
                                         dweight, nullptr) == cudaSuccess;
}

bool RmsNormRows(int64_t rows, int D, const uint16_t* x, const uint16_t* w, float eps, uint16_t* y) {
  return kc::LaunchRmsNormRows(rows, D, B(x), B(w), eps, B(y), nullptr) == cudaSuccess;
}

bool RmsNormRowsBackward(int64_t rows, int D, const uint16_t* x, const uint16_t* w, const uint16_t* dy, float eps,
                         uint16_t* dx) {
  return kc::LaunchRmsNormRowsBackward(rows, D, B(x), B(w), B(dy), eps, B(dx), nullptr) == cudaSuccess;
}

bool AddRmsNormRows(int64_t rows, int D, const uint16_t* x, const uint16_t* r, const uint16_t* w, float eps,
                    uint16_t* y, uint16_t* n) {
  return kc::LaunchAddRmsNormRows(rows, D, B(x), B(r), B(w), eps, B(y), B(n), nullptr) == cudaSuccess;
}

bool AddRmsNormRowsBackward(int64_t rows, int D, const uint16_t* y, const uint16_t* w, const uint16_t* dn,
                            const uint16_t* dy, float eps, uint16_t* dx) {
  return kc::LaunchAddRmsNormRowsBackward(rows, D, B(y), B(w), B(dn), B(dy), eps, B(dx), nullptr) == cudaSuccess;
}

bool SwiGlu(int64_t n, const uint16_t* g, const uint16_t* u, uint16_t* y) {
  return kc::LaunchSwiGlu(n, B(g), B(u), B(y), nullptr) == cudaSuccess;
}

bool SwiGluBackward(int64_t n, const uint16_t* g, const uint16_t* u, const uint16_t* dy, uint16_t* dg, uint16_t* du) {
  return kc::LaunchSwiGluBackward(n, B(g), B(u), B(dy), B(dg), B(du), nullptr) == cudaSuccess;
}

}  // namespace cuda_emu
