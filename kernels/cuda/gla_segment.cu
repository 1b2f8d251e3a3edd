// Scalar-decay (Lightning) chunked linear attention over segments of chunks, on register-level tensor cores
// (kernels/cuda/mma.cuh). Math: docs/ENGINE.md §1; design and measurements: docs/KERNELS.md ("Segments").
//
// A segment is NS consecutive chunks of 64 steps. One block (8 warps) walks one segment of one batch*head with an
// fp32 state in registers (each warp owns a 16-row slab of it), prefetching the next chunk's rows with cp.async.
// Walks (kMode):
//   kSummary  from a zero state: the segment's own contribution U_s and total log decay gamma_s (fp32);
//   kStates   from the segment's entering state: every chunk's entering state, stored in bf16;
//   kOutput   forward: o = exp(G) (q S) + (q k^T * decay mask) v for every chunk (and, on request, the chunk states);
//   kGradQ    forward, for the backward: dq = exp(G) (do S^T) + dA k with dA = (do v^T * decay mask), and
//             dgamma = q . dq per step;
//   kGradKV   reverse, from the state gradients: dv = exp(gamma - G) (k dH) + A^T do, dk = exp(gamma - G) (v dH^T)
//             + dA^T q, dgamma -= k . dk (dH = gradient of the state leaving the chunk).
// A pass is kSummary over all segments at once, the elementwise recurrence over segments (state_combine.cuh; fp32
// entering states), then one of the other walks over all segments at once. Nothing per chunk goes through memory in
// fp32; the forward needs no separate output kernel and the backward no per-chunk states.
// Forward walks: rows a = k (scaled by exp(gamma - G_t) in the update), b = v. Reverse walks: a = q (scaled by
// exp(G_t)), b = do, chunks and segments last to first; there the "state" is the gradient of the state leaving
// the current chunk.
#include <initializer_list>

#include "kernels/cuda/linear_attention_launch.h"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/smem.cuh"
#include "kernels/cuda/state_combine.cuh"
#include "kernels/cuda/tiles.cuh"

namespace fm::kernels::cuda {
namespace {

constexpr int kC = kChunkScalarDecay;  // 64 steps per chunk
constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr unsigned kAll = 0xffffffffu;

enum class SegMode { kSummary, kStates, kOutput, kGradQ, kGradKV };
// Row tiles per chunk beyond a and b: the query rows (kOutput), or the other two operands of the backward walks.
constexpr int ExtraTiles(SegMode m) {
  return m == SegMode::kOutput ? 1 : (m == SegMode::kGradQ || m == SegMode::kGradKV) ? 2 : 0;
}

template <int DK, int DV>
struct SegLayout {
  static constexpr int LDK = DK + kPadBf16, LDV = DV + kPadBf16;
  // State slabs: DK / 16 warps along the rows; with DK = 64 the two halves of the columns go to two warps.
  static constexpr int kRowWarps = DK / 16;
  static constexpr int kSlabCols = DV / (kWarps / kRowWarps);
  static constexpr int kSlabTiles = kSlabCols / 8;
  static_assert(kRowWarps * (kWarps / kRowWarps) == kWarps && kSlabTiles % 2 == 0);

  // Leading dimensions of the four row tiles of a stage (a, b, then the extra ones), in elements.
  template <SegMode M>
  static constexpr int Ld(int tile) {
    if (tile == 0) return LDK;                               // k, or q (reverse)
    if (tile == 1) return LDV;                               // v, or do (reverse)
    if (M == SegMode::kOutput) return LDK;                   // q
    if (M == SegMode::kGradQ) return tile == 2 ? LDV : LDK;  // do, q
    return tile == 2 ? LDK : LDV;                            // kGradKV: k, v
  }
  template <SegMode M>
  static size_t Bytes() {
    SmemSize s;
    for (int stage = 0; stage < 2; ++stage) {
      for (int t = 0; t < 2 + ExtraTiles(M); ++t) s.Take<bf16>(kC * Ld<M>(t));
      s.Take<float>(kC);  // raw log decays
    }
    if (M != SegMode::kSummary) s.Take<bf16>(DK * LDV);  // the state (or its gradient) in bf16
    s.Take<float>(kWarps * kC);                          // per-warp cumulative decays
    s.Take<float>(kC);                                   // per-step dot products (dgamma)
    return s.used;
  }
};

struct Stage {
  bf16* t[4];  // row tiles (only constant indices are used)
  float* g;
};

// Inclusive cumulative sum of the chunk's 64 log decays, into this warp's own copy Gw.
__device__ __forceinline__ void WarpCumsum(const float* g_raw, float* Gw, int lane) {
  float x0 = g_raw[lane], x1 = g_raw[lane + 32];
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float y0 = __shfl_up_sync(kAll, x0, off), y1 = __shfl_up_sync(kAll, x1, off);
    if (lane >= off) x0 += y0, x1 += y1;
  }
  x1 += __shfl_sync(kAll, x0, 31);
  Gw[lane] = x0;
  Gw[lane + 32] = x1;
  __syncwarp();
}

template <int NT>
__device__ __forceinline__ void Zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
}

// Scores of the warp's 16 rows (m0 = 16 mt) against all 64 steps of the chunk, as the A fragments of a following
// product over those steps: S = A_rows (B_rows)^T over `KD` columns (A fragments `arows`, B rows read from the
// [n][k] tile `btile`), times exp(G_row - G_col) where kept, 0 elsewhere. Lower (col <= row, the causal mask of
// P = q k^T) or, with kUpper, upper (col >= row: the transposed scores, e.g. A^T = k q^T).
template <int KD, bool kUpper>
__device__ __forceinline__ void MaskedScores(uint32_t (&out)[kC / 16][4], const uint32_t (&arows)[KD / 16][4],
                                             const bf16* btile, int ldb, const float* Gw, int mt, int lane) {
  const int grp = lane / 4, quad = lane % 4, r1 = 16 * mt + grp, r2 = r1 + 8;
  float p[kC / 8][4];
  Zero(p);
#pragma unroll
  for (int jp = 0; jp < kC / 16; ++jp) {
    if (kUpper ? jp >= mt : jp <= mt) {
#pragma unroll
      for (int kk = 0; kk < KD / 16; ++kk) {
        uint32_t b[4];
        mma::LoadBPairNK(b, btile, ldb, 16 * jp, 16 * kk, lane);
        mma::Mma(p[2 * jp], arows[kk], b[0], b[1]);
        mma::Mma(p[2 * jp + 1], arows[kk], b[2], b[3]);
      }
    }
  }
  const float G1 = Gw[r1], G2 = Gw[r2];
#pragma unroll
  for (int j = 0; j < kC / 8; ++j) {
    const int c = 8 * j + 2 * quad;
    const float gc0 = Gw[c], gc1 = Gw[c + 1];
    float p0, p1, p2, p3;
    if constexpr (kUpper) {  // keep col >= row; the decay runs from the row (earlier) to the column (later)
      p0 = c >= r1 ? p[j][0] * __expf(gc0 - G1) : 0.f;
      p1 = c + 1 >= r1 ? p[j][1] * __expf(gc1 - G1) : 0.f;
      p2 = c >= r2 ? p[j][2] * __expf(gc0 - G2) : 0.f;
      p3 = c + 1 >= r2 ? p[j][3] * __expf(gc1 - G2) : 0.f;
    } else {
      p0 = c <= r1 ? p[j][0] * __expf(G1 - gc0) : 0.f;
      p1 = c + 1 <= r1 ? p[j][1] * __expf(G1 - gc1) : 0.f;
      p2 = c <= r2 ? p[j][2] * __expf(G2 - gc0) : 0.f;
      p3 = c + 1 <= r2 ? p[j][3] * __expf(G2 - gc1) : 0.f;
    }
    // Accumulator tile j is half of A fragment j / 2 (registers 0, 1 or 2, 3).
    out[j / 2][(j % 2) * 2] = mma::PackBf16(p0, p1);
    out[j / 2][(j % 2) * 2 + 1] = mma::PackBf16(p2, p3);
  }
}

// acc (+)= A_frags(rows of the warp, over the chunk's steps) x B where B = rows [k][n] of `btile` starting at
// column n0; only the step tiles the mask keeps (lower: kk <= mt; upper: kk >= mt).
template <int NT, bool kUpper>
__device__ __forceinline__ void StepProduct(float (&acc)[NT][4], const uint32_t (&a)[kC / 16][4], const bf16* btile,
                                            int ldb, int n0, int mt, int lane) {
#pragma unroll
  for (int kk = 0; kk < kC / 16; ++kk) {
    if (kUpper ? kk >= mt : kk <= mt) {
#pragma unroll
      for (int jp = 0; jp < NT / 2; ++jp) {
        uint32_t b[4];
        mma::LoadBPairKN(b, btile, ldb, n0 + 16 * jp, 16 * kk, lane);
        mma::Mma(acc[2 * jp], a[kk], b[0], b[1]);
        mma::Mma(acc[2 * jp + 1], a[kk], b[2], b[3]);
      }
    }
  }
}

// acc = A_frags(rows, over `KD` columns) x B^T-or-B over those columns (B stored [n][k] with kNK, else [k][n]).
template <int NT, int KD, bool kNK>
__device__ __forceinline__ void RowProduct(float (&acc)[NT][4], const uint32_t (&a)[KD / 16][4], const bf16* btile,
                                           int ldb, int n0, int lane) {
#pragma unroll
  for (int kk = 0; kk < KD / 16; ++kk) {
#pragma unroll
    for (int jp = 0; jp < NT / 2; ++jp) {
      uint32_t b[4];
      if constexpr (kNK) {
        mma::LoadBPairNK(b, btile, ldb, n0 + 16 * jp, 16 * kk, lane);
      } else {
        mma::LoadBPairKN(b, btile, ldb, n0 + 16 * jp, 16 * kk, lane);
      }
      mma::Mma(acc[2 * jp], a[kk], b[0], b[1]);
      mma::Mma(acc[2 * jp + 1], a[kk], b[2], b[3]);
    }
  }
}

template <int KD>
__device__ __forceinline__ void LoadRows(uint32_t (&a)[KD / 16][4], const bf16* tile, int ld, int mt, int lane) {
#pragma unroll
  for (int kk = 0; kk < KD / 16; ++kk) mma::LoadA(a[kk], tile, ld, 16 * mt, 16 * kk, lane);
}

template <int NT>
__device__ __forceinline__ void ScaleRows(float (&acc)[NT][4], float f1, float f2) {
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] *= f1, acc[j][1] *= f1, acc[j][2] *= f2, acc[j][3] *= f2;
}

// The common shape of every per-chunk product of the walks, for the warp's 16 rows (tile mt) and NT output tiles
// from column n0: acc = diag(f) (X_rows S*) + (mask(X_rows Y^T) * decay) Z, with X_rows over KD columns, S* the
// bf16 state tile Sb (transposed with kStateNK: Sb is [n][k]), the causal mask lower (kUpper: the transposed
// scores' upper one) and Z's rows over the chunk's steps. f1, f2: the row factors of rows r1 and r1 + 8.
template <int KD, bool kStateNK, bool kUpper, int NT>
__device__ __forceinline__ void DecayedChunkRows(float (&acc)[NT][4], const bf16* X, int ldx, const bf16* Y, int ldy,
                                                 const bf16* Sb, int lds, const bf16* Z, int ldz, int n0, float f1,
                                                 float f2, const float* Gw, int mt, int lane) {
  uint32_t ax[KD / 16][4];
  LoadRows<KD>(ax, X, ldx, mt, lane);
  uint32_t scores[kC / 16][4];
  MaskedScores<KD, kUpper>(scores, ax, Y, ldy, Gw, mt, lane);
  Zero(acc);
  RowProduct<NT, KD, kStateNK>(acc, ax, Sb, lds, n0, lane);
  ScaleRows(acc, f1, f2);
  StepProduct<NT, kUpper>(acc, scores, Z, ldz, n0, mt, lane);
}

// Stores the warp's rows r1 = row0 + 16 mt + grp and r1 + 8 (columns n0..) of acc as bf16 into global rows of `ld`.
template <int NT>
__device__ __forceinline__ void StoreRows(bf16* rows, int64_t ld, const float (&acc)[NT][4], int r1, int n0, int lane) {
  const int quad = lane % 4;
  bf16* o1 = rows + r1 * ld;
  bf16* o2 = o1 + 8 * ld;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int col = n0 + 8 * j + 2 * quad;
    *reinterpret_cast<uint32_t*>(o1 + col) = mma::PackBf16(acc[j][0], acc[j][1]);
    *reinterpret_cast<uint32_t*>(o2 + col) = mma::PackBf16(acc[j][2], acc[j][3]);
  }
}

// sum over the warp's columns of tile[row][col] * acc (rows r1, r2 of the chunk), reduced over the quad: the
// per-row dot products of q . dq or k . dk restricted to these columns. Lane quad 0 adds `sign` times them to
// red[r1], red[r2] (shared).
template <int NT>
__device__ __forceinline__ void RowDots(float* red, float sign, const bf16* tile, int ld, const float (&acc)[NT][4],
                                        int r1, int n0, int lane) {
  const int quad = lane % 4;
  float s1 = 0.f, s2 = 0.f;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int col = n0 + 8 * j + 2 * quad;
    const float2 t1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(tile + r1 * ld + col));
    const float2 t2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(tile + (r1 + 8) * ld + col));
    s1 += t1.x * acc[j][0] + t1.y * acc[j][1];
    s2 += t2.x * acc[j][2] + t2.y * acc[j][3];
  }
#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    s1 += __shfl_xor_sync(kAll, s1, off);
    s2 += __shfl_xor_sync(kAll, s2, off);
  }
  if (quad == 0) {
    atomicAdd(red + r1, sign * s1);
    atomicAdd(red + r1 + 8, sign * s2);
  }
}

__device__ __forceinline__ int64_t RowOffset(const RowsLayout& l, int bh, int64_t t) {
  return static_cast<int64_t>(bh / l.H) * l.stride_b + static_cast<int64_t>(bh % l.H) * l.stride_h + t * l.stride_t;
}

// Pointers of one walk (unused ones null). Row tiles per mode: a, b as above; kOutput: q; kGradQ: do, q;
// kGradKV: k, v; each with its layout.
struct WalkArgs {
  const bf16* rows[4];
  RowsLayout layout[4];
  RowsLayout out1_layout;  // dv's
  const float* g;
  const float* seg_entry;  // [BH, nseg, DK, DV] fp32 (not kSummary)
  float* seg_sum;          // kSummary: [BH, nseg, DK, DV]
  float* seg_gamma;        // kSummary: [BH, nseg]
  bf16* chunk_states;      // kStates (required), kOutput (optional): [BH, N, DK, DV]
  bf16* out0;              // kOutput: o; kGradQ: dq; kGradKV: dk
  bf16* out1;              // kGradKV: dv
  float* dgamma;           // kGradQ (written), kGradKV (read and updated): [BH, T]
  int T, NS;
};

template <int DK, int DV, SegMode kMode, bool kReverse>
__global__ void __launch_bounds__(kThreads, 1) GlaSegmentKernel(const WalkArgs args) {
  using L = SegLayout<DK, DV>;
  static_assert(kMode == SegMode::kSummary || kMode == SegMode::kStates || kReverse == (kMode == SegMode::kGradKV),
                "outputs and dq walk forwards, dk/dv backwards");
  constexpr int kTiles = 2 + ExtraTiles(kMode);
  constexpr int kTileCols[4] = {DK, DV, kMode == SegMode::kGradQ ? DV : DK, kMode == SegMode::kGradKV ? DV : DK};
  SmemCarver sc{DynamicSmem()};
  // Two stages, selected by value (an array of stages indexed at run time would live in local memory).
  auto take_stage = [&] {
    Stage st{};
#pragma unroll
    for (int t = 0; t < kTiles; ++t) st.t[t] = sc.Take<bf16>(kC * L::template Ld<kMode>(t));
    st.g = sc.Take<float>(kC);
    return st;
  };
  const Stage stage0 = take_stage(), stage1 = take_stage();
  bf16* Sb = kMode != SegMode::kSummary ? sc.Take<bf16>(DK * L::LDV) : nullptr;
  float* Gall = sc.Take<float>(kWarps * kC);
  float* red = sc.Take<float>(kC);  // per-step dot products (dgamma)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane / 4, quad = lane % 4;
  float* Gw = Gall + warp * kC;
  const int seg = blockIdx.x, nseg = gridDim.x, bh = blockIdx.y, T = args.T, N = T / kC;
  const int first = seg * args.NS, count = min(args.NS, N - first);
  const int s_row0 = 16 * (warp % L::kRowWarps), s_col0 = L::kSlabCols * (warp / L::kRowWarps);
  const int mt = warp % 4, half = warp / 4;  // the warp's row tile of a chunk and column half

  // The warp's slab of the state: rows s_row0 + grp (+ 8), columns s_col0 + 8 j + 2 quad (+ 1).
  float s[L::kSlabTiles][4];
  if constexpr (kMode == SegMode::kSummary) {
    Zero(s);
  } else {
    const float* e = args.seg_entry + (static_cast<int64_t>(bh) * nseg + seg) * DK * DV;
#pragma unroll
    for (int j = 0; j < L::kSlabTiles; ++j) {
      const int col = s_col0 + 8 * j + 2 * quad;
      const float2 lo = *reinterpret_cast<const float2*>(e + (s_row0 + grp) * DV + col);
      const float2 hi = *reinterpret_cast<const float2*>(e + (s_row0 + grp + 8) * DV + col);
      s[j][0] = lo.x, s[j][1] = lo.y, s[j][2] = hi.x, s[j][3] = hi.y;
    }
  }

  const float* g_base = args.g + static_cast<int64_t>(bh) * T;
  auto chunk_of = [&](int it) { return kReverse ? first + count - 1 - it : first + it; };
  auto issue = [&](int it) {
    const Stage st = (it & 1) ? stage1 : stage0;
    const int64_t t0 = static_cast<int64_t>(chunk_of(it)) * kC;
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      const int cols = kTileCols[t];
      AsyncCopyRows(st.t[t], L::template Ld<kMode>(t), args.rows[t] + RowOffset(args.layout[t], bh, t0),
                    args.layout[t].stride_t, kC, cols);
    }
    AsyncCopyRowsF32(st.g, kC, g_base + t0, kC, 1, kC);
  };
  issue(0);
  __pipeline_commit();

  float gamma_total = 0.f;
  for (int it = 0; it < count; ++it) {
    const int n = chunk_of(it);
    const Stage st = (it & 1) ? stage1 : stage0;
    __pipeline_wait_prior(0);
    __syncthreads();  // this chunk's rows are in; every warp is done with the other stage, Sb and red
    if (it + 1 < count) issue(it + 1);
    __pipeline_commit();
    WarpCumsum(st.g, Gw, lane);
    const float gamma = Gw[kC - 1];
    const int64_t row0 = static_cast<int64_t>(bh) * T + static_cast<int64_t>(n) * kC;  // first global row
    const int r1 = 16 * mt + grp;                                                      // the warp's rows r1, r1 + 8

    if constexpr (kMode != SegMode::kSummary) {
      // The state entering this chunk (reverse: the gradient of the state leaving it), in bf16.
#pragma unroll
      for (int j = 0; j < L::kSlabTiles; ++j) {
        const int col = s_col0 + 8 * j + 2 * quad;
        *reinterpret_cast<uint32_t*>(Sb + (s_row0 + grp) * L::LDV + col) = mma::PackBf16(s[j][0], s[j][1]);
        *reinterpret_cast<uint32_t*>(Sb + (s_row0 + grp + 8) * L::LDV + col) = mma::PackBf16(s[j][2], s[j][3]);
      }
      if (threadIdx.x < kC) red[threadIdx.x] = 0.f;
      __syncthreads();
      if (args.chunk_states != nullptr) {
        bf16* dst = args.chunk_states + (static_cast<int64_t>(bh) * N + n) * DK * DV;
        for (int e = threadIdx.x; e < DK * DV / 8; e += kThreads) {
          const int r = e / (DV / 8), c = (e % (DV / 8)) * 8;
          *reinterpret_cast<uint4*>(dst + r * DV + c) = *reinterpret_cast<const uint4*>(Sb + r * L::LDV + c);
        }
      }
    }

    if constexpr (kMode == SegMode::kOutput) {
      // o = exp(G_i) (q S) + P v, P = masked, decayed q k^T; the warp's rows and half of the columns.
      const bf16 *K = st.t[0], *V = st.t[1], *Q = st.t[2];
      float o[DV / 16][4];
      DecayedChunkRows<DK, false, false>(o, Q, L::LDK, K, L::LDK, Sb, L::LDV, V, L::LDV, half * DV / 2, __expf(Gw[r1]),
                                         __expf(Gw[r1 + 8]), Gw, mt, lane);
      StoreRows(args.out0 + row0 * DV, DV, o, r1, half * DV / 2, lane);
    } else if constexpr (kMode == SegMode::kGradQ) {
      // dq = exp(G_i) (do S^T) + dA k, dA = masked, decayed do v^T; dgamma = q . dq.
      const bf16 *K = st.t[0], *V = st.t[1], *dO = st.t[2], *Q = st.t[3];
      float dq[DK / 16][4];
      DecayedChunkRows<DV, true, false>(dq, dO, L::LDV, V, L::LDV, Sb, L::LDV, K, L::LDK, half * DK / 2, __expf(Gw[r1]),
                                        __expf(Gw[r1 + 8]), Gw, mt, lane);
      StoreRows(args.out0 + row0 * DK, DK, dq, r1, half * DK / 2, lane);
      RowDots(red, 1.f, Q, L::LDK, dq, r1, half * DK / 2, lane);
    } else if constexpr (kMode == SegMode::kGradKV) {
      // Warps of half 0: dv = exp(gamma - G_j) (k dH) + A^T do with A^T = masked, decayed k q^T. Half 1:
      // dk = exp(gamma - G_j) (v dH^T) + dA^T q with dA^T = masked, decayed v do^T; dgamma -= k . dk.
      const bf16 *Q = st.t[0], *dO = st.t[1], *K = st.t[2], *V = st.t[3];
      const float f1 = __expf(gamma - Gw[r1]), f2 = __expf(gamma - Gw[r1 + 8]);
      if (half == 0) {
        float dv[DV / 8][4];
        DecayedChunkRows<DK, false, true>(dv, K, L::LDK, Q, L::LDK, Sb, L::LDV, dO, L::LDV, 0, f1, f2, Gw, mt, lane);
        StoreRows(args.out1 + RowOffset(args.out1_layout, bh, static_cast<int64_t>(n) * kC), args.out1_layout.stride_t,
                  dv, r1, 0, lane);
      } else {
        float dk[DK / 8][4];
        DecayedChunkRows<DV, true, true>(dk, V, L::LDV, dO, L::LDV, Sb, L::LDV, Q, L::LDK, 0, f1, f2, Gw, mt, lane);
        StoreRows(args.out0 + row0 * DK, DK, dk, r1, 0, lane);
        RowDots(red, -1.f, K, L::LDK, dk, r1, 0, lane);
      }
    }
    if constexpr (kMode == SegMode::kGradQ || kMode == SegMode::kGradKV) {
      __syncthreads();
      if (threadIdx.x < kC) {
        float* dg = args.dgamma + row0 + threadIdx.x;
        *dg = (kMode == SegMode::kGradKV ? *dg : 0.f) + red[threadIdx.x];
      }
    }

    // S <- exp(gamma) S + a~^T b, a~_t = a_t exp(gamma - G_t) (forward) or a_t exp(G_t) (reverse).
    if (it + 1 < count || kMode == SegMode::kSummary) {
      const bf16 *A = st.t[0], *B = st.t[1];
      const float eg = __expf(gamma);
#pragma unroll
      for (int j = 0; j < L::kSlabTiles; ++j) s[j][0] *= eg, s[j][1] *= eg, s[j][2] *= eg, s[j][3] *= eg;
      auto factor = [&](int t) { return kReverse ? __expf(Gw[t]) : __expf(gamma - Gw[t]); };
#pragma unroll
      for (int kk = 0; kk < kC / 16; ++kk) {
        uint32_t a[4];
        mma::LoadATransposed(a, A, L::LDK, s_row0, 16 * kk, lane);
        const int t = 16 * kk + 2 * quad;
        const float f0 = factor(t), f1 = factor(t + 1), f8 = factor(t + 8), f9 = factor(t + 9);
        a[0] = mma::ScaleBf16x2(a[0], f0, f1);
        a[1] = mma::ScaleBf16x2(a[1], f0, f1);
        a[2] = mma::ScaleBf16x2(a[2], f8, f9);
        a[3] = mma::ScaleBf16x2(a[3], f8, f9);
#pragma unroll
        for (int jp = 0; jp < L::kSlabTiles / 2; ++jp) {
          uint32_t b[4];
          mma::LoadBPairKN(b, B, L::LDV, s_col0 + 16 * jp, 16 * kk, lane);
          mma::Mma(s[2 * jp], a, b[0], b[1]);
          mma::Mma(s[2 * jp + 1], a, b[2], b[3]);
        }
      }
    }
    gamma_total += gamma;
  }

  if constexpr (kMode == SegMode::kSummary) {
    float* dst = args.seg_sum + (static_cast<int64_t>(bh) * nseg + seg) * DK * DV;
#pragma unroll
    for (int j = 0; j < L::kSlabTiles; ++j) {
      const int col = s_col0 + 8 * j + 2 * quad;
      *reinterpret_cast<float2*>(dst + (s_row0 + grp) * DV + col) = make_float2(s[j][0], s[j][1]);
      *reinterpret_cast<float2*>(dst + (s_row0 + grp + 8) * DV + col) = make_float2(s[j][2], s[j][3]);
    }
    if (threadIdx.x == 0) args.seg_gamma[static_cast<int64_t>(bh) * nseg + seg] = gamma_total;
  }
}

template <int DK, int DV, SegMode kMode, bool kReverse>
cudaError_t Walk(const ChunkProblem& p, int nseg, const WalkArgs& args, cudaStream_t stream) {
  return Launch(GlaSegmentKernel<DK, DV, kMode, kReverse>, dim3(nseg, p.BH), kThreads,
                SegLayout<DK, DV>::template Bytes<kMode>(), stream, args);
}

int Segments(const ChunkProblem& p, int NS) { return (p.T / kC + NS - 1) / NS; }

// Tile t holds rows of cols[t] elements, contiguous unless a layout is set afterwards.
WalkArgs Base(const ChunkProblem& p, int NS, const float* g, std::initializer_list<int> cols) {
  WalkArgs w{};
  w.g = g;
  w.T = p.T;
  w.NS = NS;
  int t = 0;
  for (int c : cols) w.layout[t++] = ContiguousRows(p.T, c);
  w.out1_layout = ContiguousRows(p.T, p.DV);
  return w;
}

// The summaries of every segment, then the recurrence over segments: the state entering each segment (reverse: the
// gradient of the state leaving it) into seg_entry, and the final state (reverse: the initial state's gradient).
// a, b: k, v (forward) or q, do (reverse).
template <int DK, int DV, bool kReverse>
cudaError_t Entries(const ChunkProblem& p, int NS, const bf16* a, const bf16* b, const float* g,
                    const float* initial_state, float* workspace, float* seg_entry, float* final_state,
                    cudaStream_t stream, const RowsLayout* b_rows = nullptr) {
  const int nseg = Segments(p, NS);
  WalkArgs w = Base(p, NS, g, {DK, DV});
  if (b_rows) w.layout[1] = *b_rows;
  w.rows[0] = a, w.rows[1] = b;
  w.seg_sum = workspace;
  w.seg_gamma = workspace + static_cast<int64_t>(p.BH) * nseg * DK * DV;
  cudaError_t err = Walk<DK, DV, SegMode::kSummary, kReverse>(p, nseg, w, stream);
  if (err != cudaSuccess) return err;
  return LaunchStateCombine<float, false, kReverse>(p.BH, nseg, DK, DV, w.seg_sum, w.seg_gamma, initial_state,
                                                    seg_entry, final_state, stream);
}

template <int DK, int DV, bool kReverse>
cudaError_t StatePass(const ChunkProblem& p, int NS, const bf16* a, const bf16* b, const float* g, const float* s_in,
                      float* workspace, float* seg_entry, bf16* chunk_states, float* s_out, cudaStream_t stream) {
  cudaError_t err = Entries<DK, DV, kReverse>(p, NS, a, b, g, s_in, workspace, seg_entry, s_out, stream);
  if (err != cudaSuccess) return err;
  WalkArgs w = Base(p, NS, g, {DK, DV});
  w.rows[0] = a, w.rows[1] = b;
  w.seg_entry = seg_entry;
  w.chunk_states = chunk_states;
  return Walk<DK, DV, SegMode::kStates, kReverse>(p, Segments(p, NS), w, stream);
}

template <int DK, int DV>
cudaError_t StatePassForward(const ChunkProblem& p, int NS, const bf16* a, const bf16* b, const float* g,
                             const float* s_in, float* workspace, float* seg_entry, bf16* chunk_states, float* s_out,
                             cudaStream_t stream) {
  return StatePass<DK, DV, false>(p, NS, a, b, g, s_in, workspace, seg_entry, chunk_states, s_out, stream);
}
template <int DK, int DV>
cudaError_t StatePassReverse(const ChunkProblem& p, int NS, const bf16* a, const bf16* b, const float* g,
                             const float* s_in, float* workspace, float* seg_entry, bf16* chunk_states, float* s_out,
                             cudaStream_t stream) {
  return StatePass<DK, DV, true>(p, NS, a, b, g, s_in, workspace, seg_entry, chunk_states, s_out, stream);
}

template <int DK, int DV>
cudaError_t Forward(const ChunkProblem& p, int NS, const bf16* q, const bf16* k, const bf16* v, const float* g,
                    const float* s_in, float* workspace, float* seg_entry, bf16* out, bf16* chunk_states,
                    float* final_state, cudaStream_t stream, const RowsLayout* v_rows) {
  cudaError_t err = Entries<DK, DV, false>(p, NS, k, v, g, s_in, workspace, seg_entry, final_state, stream, v_rows);
  if (err != cudaSuccess) return err;
  WalkArgs w = Base(p, NS, g, {DK, DV, DK});
  if (v_rows) w.layout[1] = *v_rows;
  w.rows[0] = k, w.rows[1] = v, w.rows[2] = q;
  w.seg_entry = seg_entry;
  w.chunk_states = chunk_states;
  w.out0 = out;
  return Walk<DK, DV, SegMode::kOutput, false>(p, Segments(p, NS), w, stream);
}

template <int DK, int DV>
cudaError_t Backward(const ChunkProblem& p, int NS, const bf16* q, const bf16* k, const bf16* v, const float* g,
                     const bf16* dout, const float* seg_entry, const float* dfinal, float* workspace, float* dh_entry,
                     bf16* dq, bf16* dk, bf16* dv, float* dgamma, float* dinitial, cudaStream_t stream,
                     const RowsLayout* v_rows, const RowsLayout* dv_rows) {
  cudaError_t err = Entries<DK, DV, true>(p, NS, q, dout, g, dfinal, workspace, dh_entry, dinitial, stream);
  if (err != cudaSuccess) return err;
  const int nseg = Segments(p, NS);
  WalkArgs w = Base(p, NS, g, {DK, DV, DV, DK});
  if (v_rows) w.layout[1] = *v_rows;
  w.rows[0] = k, w.rows[1] = v, w.rows[2] = dout, w.rows[3] = q;
  w.seg_entry = seg_entry;
  w.out0 = dq;
  w.dgamma = dgamma;
  err = Walk<DK, DV, SegMode::kGradQ, false>(p, nseg, w, stream);
  if (err != cudaSuccess) return err;
  w = Base(p, NS, g, {DK, DV, DK, DV});
  if (v_rows) w.layout[3] = *v_rows;
  if (dv_rows) w.out1_layout = *dv_rows;
  w.rows[0] = q, w.rows[1] = dout, w.rows[2] = k, w.rows[3] = v;
  w.seg_entry = dh_entry;
  w.out0 = dk;
  w.out1 = dv;
  w.dgamma = dgamma;
  return Walk<DK, DV, SegMode::kGradKV, true>(p, nseg, w, stream);
}

bool Supported(const ChunkProblem& p, int NS) {
  return !p.per_channel && (p.DK == 64 || p.DK == 128) && (p.DV == 64 || p.DV == 128) && p.T % kC == 0 && NS >= 1;
}

}  // namespace

// Head sizes: FM_SEG_DISPATCH(F, args...) calls F<DK, DV>(args...) for the problem's padded sizes.
#define FM_SEG_DISPATCH(F, ...)                                                     \
  (p.DK == 128 ? (p.DV == 128 ? F<128, 128>(__VA_ARGS__) : F<128, 64>(__VA_ARGS__)) \
               : (p.DV == 128 ? F<64, 128>(__VA_ARGS__) : F<64, 64>(__VA_ARGS__)))

size_t GlaSegmentWorkspaceFloats(const ChunkProblem& p, int segment_chunks) {
  if (segment_chunks < 1) return 0;
  return static_cast<size_t>(p.BH) * Segments(p, segment_chunks) * (static_cast<int64_t>(p.DK) * p.DV + 1);
}

size_t GlaSegmentStatesFloats(const ChunkProblem& p, int segment_chunks) {
  if (segment_chunks < 1) return 0;
  return static_cast<size_t>(p.BH) * Segments(p, segment_chunks) * p.DK * p.DV;
}

cudaError_t LaunchGlaSegmentStatePass(const ChunkProblem& p, int segment_chunks, bool reverse, const bf16* rows_a,
                                      const bf16* rows_b, const float* g, const float* initial_state, float* workspace,
                                      float* seg_states, bf16* chunk_states, float* final_state, cudaStream_t stream) {
  if (!Supported(p, segment_chunks) || !workspace || !seg_states || !chunk_states) return cudaErrorInvalidValue;
  if (p.BH == 0 || p.T == 0) return cudaSuccess;
  return reverse ? FM_SEG_DISPATCH(StatePassReverse, p, segment_chunks, rows_a, rows_b, g, initial_state, workspace,
                                   seg_states, chunk_states, final_state, stream)
                 : FM_SEG_DISPATCH(StatePassForward, p, segment_chunks, rows_a, rows_b, g, initial_state, workspace,
                                   seg_states, chunk_states, final_state, stream);
}

cudaError_t LaunchGlaSegmentForward(const ChunkProblem& p, int segment_chunks, const bf16* q, const bf16* k,
                                    const bf16* v, const float* g, const float* initial_state, float* workspace,
                                    float* seg_entry, bf16* out, bf16* chunk_states, float* final_state,
                                    cudaStream_t stream, const RowsLayout* v_rows) {
  if (!Supported(p, segment_chunks) || !workspace || !seg_entry || !out) return cudaErrorInvalidValue;
  if (p.BH == 0 || p.T == 0) return cudaSuccess;
  return FM_SEG_DISPATCH(Forward, p, segment_chunks, q, k, v, g, initial_state, workspace, seg_entry, out, chunk_states,
                         final_state, stream, v_rows);
}

cudaError_t LaunchGlaSegmentBackward(const ChunkProblem& p, int segment_chunks, const bf16* q, const bf16* k,
                                     const bf16* v, const float* g, const bf16* dout, const float* seg_entry,
                                     const float* dfinal, float* workspace, float* dh_entry, bf16* dq, bf16* dk,
                                     bf16* dv, float* dgamma, float* dinitial, cudaStream_t stream,
                                     const RowsLayout* v_rows, const RowsLayout* dv_rows) {
  if (!Supported(p, segment_chunks) || !workspace || !seg_entry || !dh_entry || !dq || !dk || !dv || !dgamma ||
      !dinitial)
    return cudaErrorInvalidValue;
  if (p.BH == 0 || p.T == 0) return cudaSuccess;
  return FM_SEG_DISPATCH(Backward, p, segment_chunks, q, k, v, g, dout, seg_entry, dfinal, workspace, dh_entry, dq, dk,
                         dv, dgamma, dinitial, stream, v_rows, dv_rows);
}

#undef FM_SEG_DISPATCH

}  // namespace fm::kernels::cuda
