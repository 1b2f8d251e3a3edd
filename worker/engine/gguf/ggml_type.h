// The ggml tensor element types a GGUF file may name, with their block geometry: a tensor row of a type is stored
// as whole blocks, each `block_size` values packed into `type_size` bytes (1 and sizeof(T) for plain types).
// The table covers every type id the GGUF format currently assigns; ids it retired (4, 5, 31-33, 36-38) are unknown.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "worker/engine/formats/dtype.h"

namespace fm {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
  kNVFP4 = 40,
  kQ1_0 = 41,
};

struct GgmlTypeInfo {
  GgmlType type;
  const char* name;     // "F32", "Q4_K", ... as gguf-py spells GGMLQuantizationType members
  uint32_t block_size;  // values per block
  uint32_t type_size;   // bytes per block
};

// The traits of a type id, or nullptr when the id is not a known ggml type.
const GgmlTypeInfo* FindGgmlType(uint32_t id);
inline const GgmlTypeInfo* FindGgmlType(GgmlType type) { return FindGgmlType(static_cast<uint32_t>(type)); }
// "Q4_1" for a known type, "type 123" for any other id.
std::string GgmlTypeName(uint32_t id);
inline std::string GgmlTypeName(GgmlType type) { return GgmlTypeName(static_cast<uint32_t>(type)); }
// The safetensors-style element type of an unquantised ggml type (F32, F16, BF16, F64, I8..I64); nullopt otherwise.
std::optional<DType> GgmlTypeToDType(GgmlType type);

}  // namespace fm
