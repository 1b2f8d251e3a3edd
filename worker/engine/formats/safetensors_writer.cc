#include "worker/engine/formats/safetensors_writer.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/formats/atomic_file.h"
#include "worker/engine/formats/json_emit.h"
#include "worker/engine/formats/json_strict.h"
#include "worker/engine/common/utf8.h"

namespace fm {
namespace {

// The Rust library's Dtype enum order (declared by size); files list tensors by this rank, largest first.
int AlignmentRank(DType t) {
  switch (t) {
    case DType::kBool: return 0;
    case DType::kU8: return 1;
    case DType::kI8: return 2;
    case DType::kF8E5M2: return 3;
    case DType::kF8E4M3: return 4;
    case DType::kI16: return 5;
    case DType::kU16: return 6;
    case DType::kF16: return 7;
    case DType::kBF16: return 8;
    case DType::kI32: return 9;
    case DType::kU32: return 10;
    case DType::kF32: return 11;
    case DType::kF64: return 12;
    case DType::kI64: return 13;
    case DType::kU64: return 14;
  }
  return -1;
}

absl::Status ValidateMetadata(const std::optional<SafetensorsMetadata>& metadata) {
  if (!metadata) return absl::OkStatus();
  for (const auto& [key, value] : *metadata) {
    if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors metadata entry ", QuoteForMessage(key), " is not valid UTF-8"));
    }
  }
  return absl::OkStatus();
}

// Checks what a safetensors reader would reject; `where` prefixes messages (the target path).
absl::Status ValidateTensors(const std::string& where, absl::Span<const TensorToWrite> tensors) {
  absl::flat_hash_set<absl::string_view> names;
  names.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) {
    const std::string what = absl::StrCat(where, ": tensor ", QuoteForMessage(t.name));
    if (!names.insert(t.name).second) return absl::InvalidArgumentError(absl::StrCat(what, ": duplicate name"));
    if (t.name == "__metadata__") {
      return absl::InvalidArgumentError(absl::StrCat(what, ": name is reserved for the header's metadata"));
    }
    if (!IsValidUtf8(t.name)) return absl::InvalidArgumentError(absl::StrCat(what, ": name is not valid UTF-8"));
    if (AlignmentRank(t.dtype) < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": invalid dtype"));
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": negative dimension ", d));
      const auto ud = static_cast<uint64_t>(d);
      if (ud != 0 && numel > std::numeric_limits<uint64_t>::max() / ud) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": element count overflows"));
      }
      numel *= ud;
    }
    const uint64_t esize = DTypeSize(t.dtype);
    if (numel > std::numeric_limits<uint64_t>::max() / esize || numel * esize != t.nbytes) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": nbytes ", t.nbytes, " does not match ", numel,
                                                     " elements of ", std::string(DTypeName(t.dtype))));
    }
    if (t.nbytes > 0 && t.data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": null data for ", t.nbytes, " bytes"));
    }
  }
  return absl::OkStatus();
}

// Indices of `tensors` in file order: dtype rank descending, then name.
std::vector<size_t> FileOrder(absl::Span<const TensorToWrite> tensors) {
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    int ra = AlignmentRank(tensors[a].dtype), rb = AlignmentRank(tensors[b].dtype);
    if (ra != rb) return ra > rb;
    return tensors[a].name < tensors[b].name;
  });
  return order;
}

// Length prefix + padded header for tensors already validated and laid out in `order`.
absl::StatusOr<std::string> BuildHeader(const std::string& where, absl::Span<const TensorToWrite> tensors,
                                        const std::vector<size_t>& order,
                                        const std::optional<SafetensorsMetadata>& metadata) {
  std::string header = "{";
  bool first = true;
  if (metadata) {
    header += "\"__metadata__\":{";
    bool first_key = true;
    for (const auto& [key, value] : *metadata) {
      if (!first_key) header += ',';
      first_key = false;
      AppendSerdeJsonString(&header, key);
      header += ':';
      AppendSerdeJsonString(&header, value);
    }
    header += '}';
    first = false;
  }
  uint64_t offset = 0;
  for (size_t i : order) {
    const TensorToWrite& t = tensors[i];
    if (!first) header += ',';
    first = false;
    AppendSerdeJsonString(&header, t.name);
    absl::StrAppend(&header, ":{\"dtype\":\"", std::string(DTypeName(t.dtype)), "\",\"shape\":[");
    for (size_t k = 0; k < t.shape.size(); ++k) absl::StrAppend(&header, k ? "," : "", t.shape[k]);
    absl::StrAppend(&header, "],\"data_offsets\":[", offset, ",", offset + t.nbytes, "]}");
    offset += t.nbytes;
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');
  if (header.size() > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": header of ", header.size(), " bytes exceeds the limit of ",
                                                   kMaxSafetensorsHeaderBytes));
  }
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  out += header;
  return out;
}

absl::StatusOr<std::string> PrepareHeader(const std::string& where, absl::Span<const TensorToWrite> tensors,
                                          const std::optional<SafetensorsMetadata>& metadata,
                                          std::vector<size_t>* order) {
  FM_RETURN_IF_ERROR(ValidateTensors(where, tensors));
  absl::Status s = ValidateMetadata(metadata);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", s.message()));
  *order = FileOrder(tensors);
  return BuildHeader(where, tensors, *order, metadata);
}

// huggingface_hub's split_state_dict_into_shards_factory: walk in order; a tensor larger than the limit becomes a
// shard of its own at once; otherwise it closes the current shard if it would not fit, then joins it.
std::vector<std::vector<size_t>> SplitIntoShards(absl::Span<const TensorToWrite> tensors, uint64_t max_shard_bytes) {
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_size = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t size = tensors[i].nbytes;
    if (size > max_shard_bytes) {
      shards.push_back({i});
      continue;
    }
    if (current_size + size > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(i);
    current_size += size;
  }
  if (!current.empty()) shards.push_back(std::move(current));
  return shards;
}

bool IsShardFileName(std::string_view name) {
  // model-DDDDD-of-DDDDD.safetensors
  constexpr std::string_view kPrefix = "model-", kMiddle = "-of-", kSuffix = ".safetensors";
  if (name.size() != kPrefix.size() + 5 + kMiddle.size() + 5 + kSuffix.size()) return false;
  if (name.substr(0, kPrefix.size()) != kPrefix || name.substr(name.size() - kSuffix.size()) != kSuffix) return false;
  name.remove_prefix(kPrefix.size());
  for (size_t i = 0; i < 14; ++i) {
    if (i >= 5 && i < 9) {
      if (name[i] != kMiddle[i - 5]) return false;
    } else if (!absl::ascii_isdigit(static_cast<unsigned char>(name[i]))) {
      return false;
    }
  }
  return true;
}

absl::Status RemoveIfPresent(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::InternalError(absl::StrCat(path, ": cannot remove stale file: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// Removes weight files of an earlier save that `keep` does not contain.
absl::Status RemoveStaleWeightFiles(const std::string& dir, const std::set<std::string>& keep) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return absl::InternalError(absl::StrCat(dir, ": cannot list directory: ", std::strerror(errno)));
  std::vector<std::string> stale;
  while (const dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    bool weight_file = name == kSingleCheckpointFile || name == kCheckpointIndexFile || IsShardFileName(name);
    if (weight_file && !keep.contains(name)) stale.push_back(std::move(name));
  }
  ::closedir(d);
  for (const std::string& name : stale) FM_RETURN_IF_ERROR(RemoveIfPresent(absl::StrCat(dir, "/", name)));
  return absl::OkStatus();
}

std::string IndexJson(const std::map<std::string, std::string>& weight_map, uint64_t total_parameters,
                      uint64_t total_size) {
  std::string out = absl::StrCat("{\n  \"metadata\": {\n    \"total_parameters\": ", total_parameters,
                                 ",\n    \"total_size\": ", total_size, "\n  },\n  \"weight_map\": {");
  bool first = true;
  for (const auto& [name, file] : weight_map) {
    out += first ? "\n    " : ",\n    ";
    first = false;
    AppendPythonAsciiJsonString(&out, name);
    out += ": ";
    AppendPythonAsciiJsonString(&out, file);
  }
  out += weight_map.empty() ? "}\n}\n" : "\n  }\n}\n";
  return out;
}

}  // namespace

const SafetensorsMetadata& DefaultSafetensorsMetadata() {
  static const SafetensorsMetadata* const kDefault = new SafetensorsMetadata{{"format", "pt"}};
  return *kDefault;
}

absl::StatusOr<std::string> SerializeSafetensorsHeader(absl::Span<const TensorToWrite> tensors,
                                                       const std::optional<SafetensorsMetadata>& metadata) {
  std::vector<size_t> order;
  return PrepareHeader("<memory>", tensors, metadata, &order);
}

absl::StatusOr<std::string> SerializeSafetensors(absl::Span<const TensorToWrite> tensors,
                                                 const std::optional<SafetensorsMetadata>& metadata) {
  std::vector<size_t> order;
  FM_ASSIGN_OR_RETURN(std::string out, PrepareHeader("<memory>", tensors, metadata, &order));
  for (size_t i : order) {
    if (tensors[i].nbytes > 0) out.append(static_cast<const char*>(tensors[i].data), tensors[i].nbytes);
  }
  return out;
}

absl::Status WriteSafetensors(const std::string& path, absl::Span<const TensorToWrite> tensors,
                              const std::optional<SafetensorsMetadata>& metadata) {
  std::vector<size_t> order;
  FM_ASSIGN_OR_RETURN(std::string header, PrepareHeader(path, tensors, metadata, &order));
  FM_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> writer, AtomicFileWriter::Create(path));
  FM_RETURN_IF_ERROR(writer->Append(header));
  for (size_t i : order) FM_RETURN_IF_ERROR(writer->Append(tensors[i].data, tensors[i].nbytes));
  return writer->Commit();
}

absl::StatusOr<std::vector<std::string>> WriteShardedCheckpoint(const std::string& dir,
                                                                absl::Span<const TensorToWrite> tensors,
                                                                uint64_t max_shard_bytes,
                                                                const std::optional<SafetensorsMetadata>& metadata) {
  FM_RETURN_IF_ERROR(ValidateTensors(dir, tensors));
  if (absl::Status s = ValidateMetadata(metadata); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": ", s.message()));
  }
  std::vector<std::vector<size_t>> shards = SplitIntoShards(tensors, max_shard_bytes);
  if (shards.empty()) shards.emplace_back();  // no tensors: one empty model.safetensors
  const size_t count = shards.size();

  std::vector<std::string> written;
  auto remove_written = [&] {
    for (const std::string& name : written) ::unlink(absl::StrCat(dir, "/", name).c_str());
  };
  std::map<std::string, std::string> weight_map;
  for (size_t k = 0; k < count; ++k) {
    std::string name = count == 1 ? std::string(kSingleCheckpointFile)
                                  : absl::StrFormat("model-%05d-of-%05d.safetensors", k + 1, count);
    std::vector<TensorToWrite> subset;
    subset.reserve(shards[k].size());
    for (size_t i : shards[k]) {
      subset.push_back(tensors[i]);
      weight_map.emplace(tensors[i].name, name);
    }
    absl::Status s = WriteSafetensors(absl::StrCat(dir, "/", name), subset, metadata);
    if (!s.ok()) {
      remove_written();
      return s;
    }
    written.push_back(std::move(name));
  }
  if (count > 1) {
    // A stale single file would shadow the index for readers that prefer it (transformers does); drop it first.
    absl::Status s = RemoveIfPresent(absl::StrCat(dir, "/", kSingleCheckpointFile));
    uint64_t total_parameters = 0, total_size = 0;
    for (const TensorToWrite& t : tensors) {
      total_parameters += t.nbytes / DTypeSize(t.dtype);
      total_size += t.nbytes;
    }
    if (s.ok()) {
      s = WriteFileAtomically(absl::StrCat(dir, "/", kCheckpointIndexFile),
                              IndexJson(weight_map, total_parameters, total_size));
    }
    if (!s.ok()) {
      remove_written();
      return s;
    }
    written.push_back(kCheckpointIndexFile);
  }
  FM_RETURN_IF_ERROR(RemoveStaleWeightFiles(dir, std::set<std::string>(written.begin(), written.end())));
  FM_RETURN_IF_ERROR(SyncDirectory(dir));
  return written;
}

}  // namespace fm
