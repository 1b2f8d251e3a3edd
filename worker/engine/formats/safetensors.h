// Reader for the safetensors format (https://huggingface.co/docs/safetensors), zero-copy over a MappedFile.
//
// Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON (an object: tensor name ->
// {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional "__metadata__" object of strings), padded
// with spaces, then the data section. Parse() validates all of it: N <= 100,000,000 and inside the file; strict
// JSON (no duplicate keys, nothing but spaces after the object); entries with exactly the three fields of the right
// types; known dtypes; non-negative dims whose product (and byte size) does not overflow; end - begin equal to the
// byte size; and the byte ranges, sorted, tile the data section exactly (from 0, no gap, no overlap, to its end).
// Errors are INVALID_ARGUMENT, or DATA_LOSS when the file is shorter than its header says; every message starts
// with the file's path and names the tensor it is about. Parse() never reads outside the mapping, whatever the bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "worker/engine/formats/dtype.h"
#include "worker/engine/formats/mapped_file.h"

namespace fm {

// Headers larger than this are rejected (the limit the Rust safetensors library enforces).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

using SafetensorsMetadata = std::map<std::string, std::string>;

// One tensor as the header describes it. Offsets are relative to the start of the data section.
struct SafetensorsTensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // [] for a scalar
  uint64_t numel;
  uint64_t begin;
  uint64_t end;
  uint64_t nbytes() const { return end - begin; }
};

// A tensor's bytes inside the mapping (row-major, little-endian, as stored). Valid while the MappedFile lives.
struct TensorView {
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // never null for a parsed file, even when nbytes == 0
  size_t nbytes;
};

class SafetensorsFile {
 public:
  // Maps `path` and parses it. NOT_FOUND if the file is missing.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);
  // Parses bytes already mapped (or held in memory via MappedFile::FromBytes); the file's path names it in errors.
  static absl::StatusOr<SafetensorsFile> Parse(std::shared_ptr<const MappedFile> file);

  // Tensors in the order of their bytes in the file (by begin, then end, then name).
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }
  // nullptr if there is no tensor of that name.
  const SafetensorsTensorInfo* Find(std::string_view name) const;
  // NOT_FOUND (naming the file and the tensor) if there is no tensor of that name.
  absl::StatusOr<TensorView> View(std::string_view name) const;
  // `info` must be one of tensors().
  TensorView View(const SafetensorsTensorInfo& info) const;

  // The "__metadata__" map (empty if absent).
  const SafetensorsMetadata& metadata() const { return metadata_; }
  bool has_metadata() const { return has_metadata_; }
  // The mapping the views point into; hold it to keep their bytes alive.
  const std::shared_ptr<const MappedFile>& file() const { return file_; }
  const std::string& path() const { return file_->path(); }
  // Offset of the data section in the file: 8 + header length.
  uint64_t data_start() const { return data_start_; }

 private:
  SafetensorsFile() = default;

  std::shared_ptr<const MappedFile> file_;
  uint64_t data_start_ = 0;
  std::vector<SafetensorsTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> by_name_;
  SafetensorsMetadata metadata_;
  bool has_metadata_ = false;
};

}  // namespace fm
