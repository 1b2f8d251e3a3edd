#include "worker/engine/gguf/gguf_dequant.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "worker/engine/common/status_macros.h"

namespace fm {

static_assert(std::endian::native == std::endian::little, "the block decoders read little-endian fields in place");

namespace {

// Block layouts (offsets in bytes within one block; "f16" = IEEE binary16 scale). QK = 256 for K-quants.
//  Q4_0 (18):  d f16 @0, qs[16] @2 — value j < 16 is the low nibble of qs[j], value j + 16 its high nibble;
//              y = d * (q - 8).
//  Q4_1 (20):  d f16 @0, m f16 @2, qs[16] @4 (nibbles as Q4_0); y = d * q + m.
//  Q5_0 (22):  d f16 @0, qh u32 @2 (bit j = 5th bit of value j), qs[16] @6; y = d * (q - 16).
//  Q5_1 (24):  d f16 @0, m f16 @2, qh u32 @4, qs[16] @8; y = d * q + m.
//  Q8_0 (34):  d f16 @0, qs int8[32] @2; y = q * d.
//  Q2_K (84):  scales[16] @0 (low nibble scale, high nibble min, one per 16 values), qs[64] @16, d f16 @80,
//              dmin f16 @82. Value e: half h = e / 128, shift k = (e % 128) / 32, i = e % 32,
//              q = (qs[32h + i] >> 2k) & 3; y = (d * sc) * q - (dmin * mn) for sub-block e / 16.
//  Q3_K (110): hmask[32] @0, qs[64] @32, scales[12] @96, d f16 @108. 16 six-bit scales (minus 32): scale s has
//              low 4 bits from scales[s % 8] (low nibble for s < 8, high for s >= 8) and high 2 bits from
//              scales[8 + s % 4] >> 2(s / 4). Low 2 bits of value e as in Q2_K; bit (e / 32) of hmask[e % 32]
//              clear means subtract 4. y = (d * scale) * q.
//  Q4_K (144): d f16 @0, dmin f16 @2, scales[12] @4, qs[128] @16. 8 sub-blocks of 32 with 6-bit scale and min:
//              for j < 4 sc = s[j] & 63, mn = s[j + 4] & 63; for j >= 4 sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
//              mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4). Value e: chunk c = e / 64, nibble k = (e / 32) % 2,
//              q = (qs[32c + e % 32] >> 4k) & 15; y = (d * sc) * q - (dmin * mn) for sub-block e / 32.
//  Q5_K (176): d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48; as Q4_K plus bit (e / 32) of qh[e % 32]
//              as the 5th bit of q.
//  Q6_K (210): ql[128] @0, qh[64] @128, scales int8[16] @192, d f16 @208. Value e: h = e / 128, r = e % 128,
//              low = (ql[64h + r % 64] >> 4(r / 64)) & 15, high = (qh[32h + r % 32] >> 2(r / 32)) & 3,
//              q = (low | high << 4) - 32; y = (d * scales[e / 16]) * q.
// Every product and sum is one float32 operation in the order written, as gguf.quants computes it.

uint32_t HalfToFloatBits(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return sign | 0x7f800000u | (mant << 13);  // infinity or NaN (payload kept)
  if (exp != 0) return sign | ((exp + 112) << 23) | (mant << 13);
  if (mant == 0) return sign;  // signed zero
  // Subnormal: mant * 2^-24; normalise so the leading one becomes the implicit bit.
  int32_t e = 113;  // exponent field of 2^-14 in float32
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3ffu) << 13);
}

// All 65536 half values as floats (256 KiB), built once.
const float* HalfTable() {
  static const float* table = [] {
    auto* t = new float[65536];
    for (uint32_t i = 0; i < 65536; ++i) t[i] = std::bit_cast<float>(HalfToFloatBits(static_cast<uint16_t>(i)));
    return t;
  }();
  return table;
}

inline uint16_t Ld16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t Ld32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void DecodeF32(const uint8_t* __restrict src, size_t n, float* __restrict y) { std::memcpy(y, src, n * 4); }

void DecodeF16(const uint8_t* __restrict src, size_t n, float* __restrict y) {
  const float* h2f = HalfTable();
  for (size_t i = 0; i < n; ++i) y[i] = h2f[Ld16(src + 2 * i)];
}

void DecodeBF16(const uint8_t* __restrict src, size_t n, float* __restrict y) {
  for (size_t i = 0; i < n; ++i) y[i] = std::bit_cast<float>(static_cast<uint32_t>(Ld16(src + 2 * i)) << 16);
}

void DecodeQ4_0(const uint8_t* __restrict b, size_t nb, float* __restrict y) {
  const float* h2f = HalfTable();
  for (size_t k = 0; k < nb; ++k, b += 18, y += 32) {
    const float d = h2f[Ld16(b)];
    const uint8_t* qs = b + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * static_cast<float>(static_cast<int>(qs[j] & 0x0f) - 8);
      y[j + 16] = d * static_cast<float>(static_cast<int>(qs[j] >> 4) - 8);
    }
  }
}

void DecodeQ4_1(const uint8_t* __restrict b, size_t nb, float* __restrict y) {
  const float* h2f = HalfTable();
  for (size_t k = 0; k < nb; ++k, b += 20, y += 32) {
    const float d = h2f[Ld16(b)];
    const float m = h2f[Ld16(b + 2)];
    const uint8_t* qs = b + 4;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * static_cast<float>(qs[j] & 0x0f) + m;
      y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
    }
  }
}

void DecodeQ5_0(const uint8_t* __restrict b, size_t nb, float* __restrict y) {
  const float* h2f = HalfTable();
  for (size_t k = 0; k < nb; ++k, b += 22, y += 32) {
    const float d = h2f[Ld16(b)];
    const uint32_t qh = Ld32(b + 2);
    const uint8_t* qs = b + 6;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = d * static_cast<float>(lo - 16);
      y[j + 16] = d * static_cast<float>(hi - 16);
    }
  }
}

void DecodeQ5_1(const uint8_t* __restrict b, size_t nb, float* __restrict y) {
  const float* h2f = HalfTable();
  for (size_t k = 0; k < nb; ++k, b += 24, y += 32) {
    const float d = h2f[Ld16(b)];
    const float m = h2f[Ld16(b + 2)];
    const uint32_t qh = Ld32(b + 4);
    const uint8_t* qs = b + 8;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = d * static_cast<float>(lo) + m;
      y[j + 16] = d * static_cast<float>(hi) + m;
    }
  }
}

void DecodeQ8_0(const uint8_t* __restrict b, size_t nb, float* __restrict y) {
  const float* h2f = HalfTable();
  for (size_t k = 0; k < nb; ++k, b += 34, y += 32) {
    const float d = h2f[Ld16(b)];
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
  }
}

void DecodeQ2_K(const uint8_t* __restrict b, size_t nb, float* __restrict y) {
  const float* h2f = HalfTable();
  for (size_t k = 0; k < nb; ++k, b += 84, y += 256) {
    const uint8_t* scales = b;
    const uint8_t* qs = b + 16;
    const float d = h2f[Ld16(b + 80)];
    const float dmin = h2f[Ld16(b + 82)];
    for (int e0 = 0; e0 < 256; e0 += 16) {
      const int s = e0 / 16;
      const float dl = d * static_cast<float>(scales[s] & 0x0f);
      const float ml = dmin * static_cast<float>(scales[s] >> 4);
      const int h = e0 / 128, shift = 2 * ((e0 % 128) / 32), i0 = e0 % 32;
      const uint8_t* q = qs + 32 * h + i0;
      for (int i = 0; i < 16; ++i) y[e0 + i] = dl * static_cast<float>((q[i] >> shift) & 3) - ml;
    }
  }
}

void DecodeQ3_K(const uint8_t* __restrict b, size_t nb, float* __restrict y) {
  const float* h2f = HalfTable();
  for (size_t k = 0; k < nb; ++k, b += 110, y += 256) {
    const uint8_t* hmask = b;
    const uint8_t* qs = b + 32;
    const uint8_t* sc = b + 96;
    const float d = h2f[Ld16(b + 108)];
    for (int e0 = 0; e0 < 256; e0 += 16) {
      const int s = e0 / 16;
      const int low = s < 8 ? (sc[s] & 0x0f) : (sc[s - 8] >> 4);
      const int high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
      const float dl = d * static_cast<float>((low | (high << 4)) - 32);
      const int h = e0 / 128, shift = 2 * ((e0 % 128) / 32), i0 = e0 % 32, hbit = e0 / 32;
      const uint8_t* q = qs + 32 * h + i0;
      const uint8_t* m = hmask + i0;
      for (int i = 0; i < 16; ++i) {
        const int v = ((q[i] >> shift) & 3) - (((m[i] >> hbit) & 1) ? 0 : 4);
        y[e0 + i] = dl * static_cast<float>(v);
      }
    }
  }
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block.
inline void KScaleMin(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void DecodeQ4_K(const uint8_t* __restrict b, size_t nb, float* __restrict y) {
  const float* h2f = HalfTable();
  for (size_t k = 0; k < nb; ++k, b += 144, y += 256) {
    const float d = h2f[Ld16(b)];
    const float dmin = h2f[Ld16(b + 2)];
    const uint8_t* scales = b + 4;
    const uint8_t* qs = b + 16;
    for (int j = 0; j < 8; ++j) {
      int sc, mn;
      KScaleMin(scales, j, &sc, &mn);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(mn);
      const uint8_t* q = qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      float* out = y + 32 * j;
      for (int i = 0; i < 32; ++i) out[i] = dl * static_cast<float>((q[i] >> shift) & 0x0f) - ml;
    }
  }
}

void DecodeQ5_K(const uint8_t* __restrict b, size_t nb, float* __restrict y) {
  const float* h2f = HalfTable();
  for (size_t k = 0; k < nb; ++k, b += 176, y += 256) {
    const float d = h2f[Ld16(b)];
    const float dmin = h2f[Ld16(b + 2)];
    const uint8_t* scales = b + 4;
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48;
    for (int j = 0; j < 8; ++j) {
      int sc, mn;
      KScaleMin(scales, j, &sc, &mn);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(mn);
      const uint8_t* q = qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      float* out = y + 32 * j;
      for (int i = 0; i < 32; ++i) {
        const int v = ((q[i] >> shift) & 0x0f) | (((qh[i] >> j) & 1) << 4);
        out[i] = dl * static_cast<float>(v) - ml;
      }
    }
  }
}

void DecodeQ6_K(const uint8_t* __restrict b, size_t nb, float* __restrict y) {
  const float* h2f = HalfTable();
  for (size_t k = 0; k < nb; ++k, b += 210, y += 256) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = h2f[Ld16(b + 208)];
    for (int e0 = 0; e0 < 256; e0 += 16) {
      const float dl = d * static_cast<float>(scales[e0 / 16]);
      const int h = e0 / 128, r0 = e0 % 128;
      const uint8_t* lo = ql + 64 * h + r0 % 64;
      const int lo_shift = 4 * (r0 / 64);
      const uint8_t* hi = qh + 32 * h + r0 % 32;
      const int hi_shift = 2 * (r0 / 32);
      for (int i = 0; i < 16; ++i) {
        const int v = (((lo[i] >> lo_shift) & 0x0f) | (((hi[i] >> hi_shift) & 3) << 4)) - 32;
        y[e0 + i] = dl * static_cast<float>(v);
      }
    }
  }
}

using Decoder = void (*)(const uint8_t* src, size_t num_blocks, float* dst);

Decoder FindDecoder(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return DecodeF32;
    case GgmlType::kF16:
      return DecodeF16;
    case GgmlType::kBF16:
      return DecodeBF16;
    case GgmlType::kQ4_0:
      return DecodeQ4_0;
    case GgmlType::kQ4_1:
      return DecodeQ4_1;
    case GgmlType::kQ5_0:
      return DecodeQ5_0;
    case GgmlType::kQ5_1:
      return DecodeQ5_1;
    case GgmlType::kQ8_0:
      return DecodeQ8_0;
    case GgmlType::kQ2_K:
      return DecodeQ2_K;
    case GgmlType::kQ3_K:
      return DecodeQ3_K;
    case GgmlType::kQ4_K:
      return DecodeQ4_K;
    case GgmlType::kQ5_K:
      return DecodeQ5_K;
    case GgmlType::kQ6_K:
      return DecodeQ6_K;
    default:
      return nullptr;
  }
}

// Below this many output values per thread, more threads cost more than they save.
constexpr uint64_t kMinValuesPerThread = 1 << 18;

}  // namespace

float HalfToFloat(uint16_t bits) { return std::bit_cast<float>(HalfToFloatBits(bits)); }

float BFloat16ToFloat(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

bool CanDequantize(GgmlType type) { return FindDecoder(type) != nullptr; }

absl::Status DequantizeBlocks(GgmlType type, absl::Span<const uint8_t> src, absl::Span<float> dst) {
  const GgmlTypeInfo* info = FindGgmlType(type);
  Decoder decode = FindDecoder(type);
  if (info == nullptr || decode == nullptr) {
    return absl::UnimplementedError(absl::StrCat("DequantizeBlocks: cannot dequantise ", GgmlTypeName(type)));
  }
  if (src.size() % info->type_size != 0 || dst.size() != src.size() / info->type_size * info->block_size) {
    return absl::InvalidArgumentError(absl::StrCat("DequantizeBlocks: ", src.size(), " bytes of ", info->name,
                                                   " do not decode to ", dst.size(), " values"));
  }
  if (!src.empty()) decode(src.data(), src.size() / info->type_size, dst.data());
  return absl::OkStatus();
}

namespace {

std::string TensorError(const GgufFile& file, const GgufTensorInfo& tensor, std::string_view what) {
  return absl::StrCat(file.path(), ": tensor '", tensor.name, "': ", absl::string_view(what.data(), what.size()));
}

// Checks that `tensor` is a consistent info whose bytes lie in `file` and that its type can be decoded.
absl::StatusOr<const GgmlTypeInfo*> CheckTensor(const GgufFile& file, const GgufTensorInfo& tensor) {
  const GgmlTypeInfo* info = FindGgmlType(tensor.type);
  if (info == nullptr || FindDecoder(tensor.type) == nullptr) {
    return absl::UnimplementedError(
        TensorError(file, tensor, absl::StrCat("cannot dequantise type ", GgmlTypeName(tensor.type))));
  }
  bool ok = !tensor.dims.empty() && tensor.dims.size() <= 4;
  uint64_t elements = 1;
  for (size_t i = 0; ok && i < tensor.dims.size(); ++i) {
    ok = tensor.dims[i] > 0 && !__builtin_mul_overflow(elements, tensor.dims[i], &elements);
  }
  ok = ok && elements == tensor.num_elements && tensor.dims[0] % info->block_size == 0;
  uint64_t bytes = 0;
  ok = ok &&
       !__builtin_mul_overflow(tensor.dims[0] / info->block_size * info->type_size, elements / tensor.dims[0], &bytes);
  ok = ok && bytes == tensor.num_bytes && file.TensorBytes(tensor).size() == tensor.num_bytes;
  if (!ok)
    return absl::InvalidArgumentError(TensorError(file, tensor, "tensor info does not describe data of this file"));
  return info;
}

}  // namespace

absl::Status DequantizeRows(const GgufFile& file, const GgufTensorInfo& tensor, uint64_t first_row, uint64_t num_rows,
                            absl::Span<float> out, const DequantOptions& options) {
  auto error = [&](std::string_view what) { return TensorError(file, tensor, what); };
  FM_ASSIGN_OR_RETURN(const GgmlTypeInfo* info, CheckTensor(file, tensor));
  const Decoder decode = FindDecoder(tensor.type);
  absl::Span<const uint8_t> bytes = file.TensorBytes(tensor);
  const uint64_t total_rows = tensor.num_rows();
  if (first_row > total_rows || num_rows > total_rows - first_row) {
    return absl::OutOfRangeError(
        error(absl::StrCat("rows [", first_row, ", +", num_rows, ") outside its ", total_rows, " rows")));
  }
  const uint64_t row_len = tensor.row_length();
  if (out.size() != num_rows * row_len) {
    return absl::InvalidArgumentError(
        error(absl::StrCat("output holds ", out.size(), " floats, need ", num_rows * row_len)));
  }
  const uint64_t row_bytes = tensor.row_bytes();
  const uint64_t blocks_per_row = row_len / info->block_size;
  const uint8_t* src = bytes.data() + first_row * row_bytes;

  uint64_t threads = options.num_threads > 0 ? static_cast<uint64_t>(options.num_threads)
                                             : std::max(1u, std::thread::hardware_concurrency());
  threads = std::min<uint64_t>(threads, std::max<uint64_t>(1, out.size() / kMinValuesPerThread));
  threads = std::min<uint64_t>(threads, std::max<uint64_t>(1, num_rows));
  if (threads <= 1) {
    if (num_rows > 0) decode(src, num_rows * blocks_per_row, out.data());
    return absl::OkStatus();
  }
  std::vector<std::thread> workers;
  workers.reserve(threads - 1);
  auto run = [&](uint64_t t) {
    uint64_t r0 = num_rows * t / threads, r1 = num_rows * (t + 1) / threads;
    if (r1 > r0) decode(src + r0 * row_bytes, (r1 - r0) * blocks_per_row, out.data() + r0 * row_len);
  };
  for (uint64_t t = 1; t < threads; ++t) {
    try {
      workers.emplace_back(run, t);
    } catch (const std::system_error&) {
      run(t);  // no thread to be had: do this share here
    }
  }
  run(0);
  for (std::thread& w : workers) w.join();
  return absl::OkStatus();
}

absl::Status DequantizeTensor(const GgufFile& file, const GgufTensorInfo& tensor, absl::Span<float> out,
                              const DequantOptions& options) {
  FM_RETURN_IF_ERROR(CheckTensor(file, tensor).status());
  return DequantizeRows(file, tensor, 0, tensor.num_rows(), out, options);
}

absl::StatusOr<std::vector<float>> DequantizeToVector(const GgufFile& file, const GgufTensorInfo& tensor,
                                                      const DequantOptions& options) {
  FM_RETURN_IF_ERROR(CheckTensor(file, tensor).status());  // bounds num_elements by the file's bytes
  std::vector<float> out(tensor.num_elements);
  FM_RETURN_IF_ERROR(DequantizeTensor(file, tensor, absl::MakeSpan(out), options));
  return out;
}

}  // namespace fm
