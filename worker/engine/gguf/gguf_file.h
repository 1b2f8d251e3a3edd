// GgufFile reads a GGUF model file (format versions 2 and 3, little-endian) from a read-only mapping: the metadata
// key/value table, the tensor infos and the location of each tensor's bytes. Parse() validates every byte it relies
// on before trusting it: each length and count is checked against the bytes left before anything is allocated,
// tensor shapes, types, offsets and sizes are checked (aligned, inside the file, non-overlapping), and duplicate keys
// or tensor names are rejected. It never reads outside the mapping, whatever the input. Errors name the file and the
// key or tensor: DATA_LOSS for truncated or impossible sizes, INVALID_ARGUMENT for malformed content, UNIMPLEMENTED
// for valid files it does not read (GGUF v1, big-endian files, unknown versions, unknown ggml types, nested arrays).
// The object is cheap to copy; string views it hands out point into the mapping and stay valid while any copy lives.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/engine/formats/mapped_file.h"
#include "worker/engine/gguf/ggml_type.h"

namespace fm {

// Metadata value types, with the ids the file stores.
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "UINT8", "STRING", "ARRAY", ... (gguf-py's GGUFValueType names); "type N" for an unknown id.
std::string GgufValueTypeName(GgufValueType type);

// One metadata value, as stored. Scalars have count 1 and element_type == type; arrays have type kArray and
// `count` elements of `element_type` (never kArray). Numbers and bools (scalar or array) are the packed
// little-endian bytes at `data`; strings are in `string` (scalar) or `strings` (array). The typed getters of
// GgufFile are the convenient way to read them.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  GgufValueType element_type = GgufValueType::kUint8;
  uint64_t count = 1;
  const uint8_t* data = nullptr;
  std::string_view string;
  std::vector<std::string_view> strings;
};

struct GgufKeyValue {
  std::string key;
  GgufValue value;
};

// One tensor. dims are in GGUF (ggml) order: dims[0] varies fastest and is the row length, so the row-major
// (numpy / PyTorch) shape is dims reversed. A row is dims[0] / block_size whole blocks of the type.
struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // 1 to 4 entries, each > 0
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;       // as stored: relative to the start of the data section
  uint64_t file_offset = 0;  // absolute position of the first byte in the file
  uint64_t num_elements = 0;
  uint64_t num_bytes = 0;

  // Values per row, rows, and bytes per row (0 for an info without dims, which GgufFile never hands out).
  uint64_t row_length() const { return dims.empty() ? 0 : dims[0]; }
  uint64_t num_rows() const { return row_length() == 0 ? 0 : num_elements / row_length(); }
  uint64_t row_bytes() const { return num_rows() == 0 ? 0 : num_bytes / num_rows(); }
};

class GgufFile {
 public:
  // Maps and parses the file at `path` (NOT_FOUND if it does not exist).
  static absl::StatusOr<GgufFile> Open(const std::string& path);
  // Parses an existing mapping; errors name file->path().
  static absl::StatusOr<GgufFile> Parse(std::shared_ptr<const MappedFile> file);

  const std::string& path() const { return s_->file->path(); }
  const std::shared_ptr<const MappedFile>& mapped_file() const { return s_->file; }
  uint32_t version() const { return s_->version; }
  // general.alignment, or 32 when the file does not set it.
  uint64_t alignment() const { return s_->alignment; }
  // Absolute position of the tensor data section.
  uint64_t data_offset() const { return s_->data_offset; }

  // ---- Metadata ----
  // All key/value pairs in file order.
  const std::vector<GgufKeyValue>& metadata() const { return s_->metadata; }
  bool HasKey(std::string_view key) const { return FindValue(key) != nullptr; }
  // The value of `key`, or nullptr.
  const GgufValue* FindValue(std::string_view key) const;
  // The getters return NOT_FOUND for a missing key and INVALID_ARGUMENT for a value of another type;
  // integer getters return OUT_OF_RANGE for a value the result type cannot hold.
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;  // any integer type, value >= 0
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;    // any integer type, value <= INT64_MAX
  absl::StatusOr<double> GetFloat(std::string_view key) const;   // FLOAT32 or FLOAT64 (exact)
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;  // array of any integer type
  // Array of FLOAT32 or FLOAT64, widened exactly (a signalling NaN comes back quiet).
  absl::StatusOr<std::vector<double>> GetFloatArray(std::string_view key) const;

  // ---- Tensors ----
  // All tensor infos in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return s_->tensors; }
  // The tensor called `name`, or nullptr.
  const GgufTensorInfo* FindTensor(std::string_view name) const;
  // The tensor called `name`, or NOT_FOUND.
  absl::StatusOr<const GgufTensorInfo*> GetTensor(std::string_view name) const;
  // The stored bytes of a tensor of this file (num_bytes of them, inside the mapping); an empty span for an info
  // whose range does not lie inside this file.
  absl::Span<const uint8_t> TensorBytes(const GgufTensorInfo& tensor) const;

 private:
  friend class GgufParser;
  struct State {
    std::shared_ptr<const MappedFile> file;
    uint32_t version = 0;
    uint64_t alignment = 32;
    uint64_t data_offset = 0;
    std::vector<GgufKeyValue> metadata;
    absl::flat_hash_map<std::string, size_t> key_index;
    std::vector<GgufTensorInfo> tensors;
    absl::flat_hash_map<std::string, size_t> tensor_index;
  };
  explicit GgufFile(std::shared_ptr<const State> state) : s_(std::move(state)) {}

  // "<path>: key '<key>': <what>" for errors about a metadata value.
  std::string KeyError(std::string_view key, std::string_view what) const;
  absl::StatusOr<const GgufValue*> GetTyped(std::string_view key, GgufValueType type) const;
  absl::StatusOr<const GgufValue*> GetArray(std::string_view key) const;

  std::shared_ptr<const State> s_;  // shared by copies
};

}  // namespace fm
