#include "worker/engine/formats/checkpoint_dir.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/formats/json_strict.h"
#include "worker/engine/formats/safetensors_writer.h"

namespace fm {
namespace {

using json = nlohmann::json;

constexpr int kMaxIndexDepth = 64;

std::string Join(const std::string& dir, std::string_view name) {
  std::string out = dir;
  if (out.empty() || out.back() != '/') out += '/';
  out.append(name);
  return out;
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// A shard must be a plain file name inside the checkpoint directory.
bool IsPlainFileName(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

// Reads and checks model.safetensors.index.json: returns tensor name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>> ReadIndex(const std::string& index_path) {
  FM_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::Open(index_path));
  std::string_view text(reinterpret_cast<const char*>(file->data()), file->size());
  auto parsed = ParseStrictJson(text, kMaxIndexDepth);
  if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", parsed.status().message()));
  const json& root = *parsed;
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": must be a JSON object, got ", root.type_name()));
  }
  if (auto it = root.find("metadata"); it != root.end() && !it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": \"metadata\" must be an object, got ", it->type_name()));
  }
  auto wm = root.find("weight_map");
  if (wm == root.end()) return absl::InvalidArgumentError(absl::StrCat(index_path, ": no \"weight_map\""));
  if (!wm->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": \"weight_map\" must be an object, got ", wm->type_name()));
  }
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, shard] : wm->items()) {
    const std::string where = absl::StrCat(index_path, ": weight_map entry for tensor ", QuoteForMessage(name));
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " must be a file name string, got ", shard.type_name()));
    }
    const std::string& file_name = shard.get_ref<const std::string&>();
    if (!IsPlainFileName(file_name)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": shard ", QuoteForMessage(file_name),
                                                     " is not a plain file name inside the directory"));
    }
    weight_map.emplace(name, file_name);
  }
  return weight_map;
}

}  // namespace

absl::StatusOr<CheckpointDir> CheckpointDir::Open(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    int err = errno;
    std::string msg = absl::StrCat(dir, ": cannot open checkpoint directory: ", std::strerror(err));
    return err == ENOENT || err == ENOTDIR ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  if (!S_ISDIR(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(dir, ": not a directory"));

  CheckpointDir result;
  result.dir_ = dir;
  const std::string single = Join(dir, kSingleCheckpointFile);
  const std::string index = Join(dir, kCheckpointIndexFile);
  if (Exists(single)) {
    FM_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(single));
    result.files_.push_back(std::move(file));
    FM_RETURN_IF_ERROR(result.IndexFiles());
    return result;
  }
  if (!Exists(index)) {
    return absl::NotFoundError(
        absl::StrCat(dir, ": no ", kSingleCheckpointFile, " or ", kCheckpointIndexFile, " in checkpoint directory"));
  }
  result.sharded_ = true;
  FM_ASSIGN_OR_RETURN(auto weight_map, ReadIndex(index));
  std::set<std::string> shard_names;
  for (const auto& [name, shard] : weight_map) shard_names.insert(shard);
  for (const std::string& shard : shard_names) {
    auto file = SafetensorsFile::Open(Join(dir, shard));
    if (!file.ok()) {
      return absl::Status(file.status().code(),
                          absl::StrCat(file.status().message(), " (shard listed in ", index, ")"));
    }
    result.files_.push_back(*std::move(file));
  }
  FM_RETURN_IF_ERROR(result.IndexFiles());

  // The weight_map and the shards' contents must agree exactly.
  for (const auto& [name, shard] : weight_map) {
    size_t file_index;
    if (result.Find(name, &file_index) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(index, ": tensor ", QuoteForMessage(name), " is mapped to ",
                                                     QuoteForMessage(shard), ", which does not contain it"));
    }
    const std::string& actual = result.files_[file_index].path();
    if (actual != Join(dir, shard)) {
      return absl::InvalidArgumentError(absl::StrCat(index, ": tensor ", QuoteForMessage(name), " is mapped to ",
                                                     QuoteForMessage(shard), " but is stored in ", actual));
    }
  }
  for (const SafetensorsFile& file : result.files_) {
    for (const SafetensorsTensorInfo& t : file.tensors()) {
      if (!weight_map.contains(t.name)) {
        return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor ", QuoteForMessage(t.name),
                                                       " is not listed in the weight_map of ", index));
      }
    }
  }
  return result;
}

absl::Status CheckpointDir::IndexFiles() {
  for (size_t f = 0; f < files_.size(); ++f) {
    const std::vector<SafetensorsTensorInfo>& tensors = files_[f].tensors();
    for (size_t t = 0; t < tensors.size(); ++t) {
      auto [it, inserted] = by_name_.emplace(tensors[t].name, std::make_pair(f, t));
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(dir_, ": tensor ", QuoteForMessage(tensors[t].name),
                                                       " is in two shards: ", files_[it->second.first].path(),
                                                       " and ", files_[f].path()));
      }
      names_.push_back(tensors[t].name);
    }
  }
  std::sort(names_.begin(), names_.end());
  return absl::OkStatus();
}

const SafetensorsTensorInfo* CheckpointDir::Find(std::string_view name, size_t* file_index) const {
  auto it = by_name_.find(absl::string_view(name.data(), name.size()));
  if (it == by_name_.end()) return nullptr;
  if (file_index != nullptr) *file_index = it->second.first;
  return &files_[it->second.first].tensors()[it->second.second];
}

absl::StatusOr<CheckpointTensor> CheckpointDir::Get(std::string_view name) const {
  size_t file_index;
  const SafetensorsTensorInfo* info = Find(name, &file_index);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat(dir_, ": no tensor ", QuoteForMessage(name), " in checkpoint"));
  }
  const SafetensorsFile& file = files_[file_index];
  return CheckpointTensor{info, file.View(*info), file.file()};
}

}  // namespace fm
