// Element types of checkpoint tensors, with the names safetensors uses ("F32", "BF16", ...).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace fm {

enum class DType : uint8_t {
  kBool, kU8, kI8, kI16, kU16, kI32, kU32, kI64, kU64, kF16, kBF16, kF32, kF64, kF8E4M3, kF8E5M2,
};

// Bytes per element.
size_t DTypeSize(DType t);
// The safetensors spelling: "BOOL", "U8", ..., "F8_E4M3".
std::string_view DTypeName(DType t);
// Inverse of DTypeName; nullopt for an unknown name.
std::optional<DType> ParseDTypeName(std::string_view name);

}  // namespace fm
