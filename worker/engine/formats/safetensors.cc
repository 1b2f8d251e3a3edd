#include "worker/engine/formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/formats/json_strict.h"

namespace fm {
namespace {

using json = nlohmann::json;

// Top-level object -> entry object -> shape array is all a valid header needs; one spare level lets deeper
// mistakes reach the field checks, which give better messages.
constexpr int kMaxHeaderDepth = 4;

std::string ShapeString(const std::vector<int64_t>& shape) { return absl::StrCat("[", absl::StrJoin(shape, ","), "]"); }

// A short rendering of an untrusted JSON value for an error message.
std::string Brief(const json& v) {
  std::string text = v.dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace);
  if (text.size() > 48) text = absl::StrCat(text.substr(0, 45), "...");
  return text;
}

// Reads a JSON number that must be a non-negative integer no larger than `max`.
bool AsIndex(const json& v, uint64_t max, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    int64_t s = v.get<int64_t>();
    if (s < 0) return false;
    *out = static_cast<uint64_t>(s);
  } else {
    return false;
  }
  return *out <= max;
}

// Parses one tensor entry of the header; `where` is "<path>: tensor '<name>'".
absl::StatusOr<SafetensorsTensorInfo> ParseEntry(const std::string& where, const std::string& name, const json& v) {
  if (!v.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": entry must be a JSON object, got ", v.type_name()));
  }
  for (const auto& [key, unused] : v.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return absl::InvalidArgumentError(absl::StrCat(where, ": unexpected field ", QuoteForMessage(key),
                                                     " (allowed: dtype, shape, data_offsets)"));
    }
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!v.contains(key)) return absl::InvalidArgumentError(absl::StrCat(where, ": missing field '", key, "'"));
  }
  SafetensorsTensorInfo info;
  info.name = name;

  const json& dtype = v["dtype"];
  if (!dtype.is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": dtype must be a string, got ", dtype.type_name()));
  }
  const std::string& dtype_name = dtype.get_ref<const std::string&>();
  std::optional<DType> parsed = ParseDTypeName(dtype_name);
  if (!parsed) return absl::InvalidArgumentError(absl::StrCat(where, ": unknown dtype ", QuoteForMessage(dtype_name)));
  info.dtype = *parsed;

  const json& shape = v["shape"];
  if (!shape.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": shape must be an array, got ", shape.type_name()));
  }
  info.shape.reserve(shape.size());
  uint64_t numel = 1;
  bool overflow = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    uint64_t dim;
    if (!AsIndex(shape[i], std::numeric_limits<int64_t>::max(), &dim)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": shape[", i, "] = ", Brief(shape[i]),
                                                     " is not a non-negative 64-bit integer"));
    }
    info.shape.push_back(static_cast<int64_t>(dim));
    // Left-to-right checked product, as the Rust library does: a huge prefix overflows even if a later dim is 0.
    if (!overflow && dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim) overflow = true;
    if (!overflow) numel *= dim;
  }
  const uint64_t esize = DTypeSize(info.dtype);
  if (overflow || numel > std::numeric_limits<uint64_t>::max() / esize) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": shape ", ShapeString(info.shape), " of ", dtype_name, " overflows 64-bit byte count"));
  }
  info.numel = numel;

  const json& offsets = v["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": data_offsets must be an array of two integers, got ", Brief(offsets)));
  }
  if (!AsIndex(offsets[0], std::numeric_limits<uint64_t>::max(), &info.begin) ||
      !AsIndex(offsets[1], std::numeric_limits<uint64_t>::max(), &info.end)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": data_offsets ", Brief(offsets), " are not non-negative 64-bit integers"));
  }
  if (info.begin > info.end) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": data_offsets [", info.begin, ",", info.end, "] begin after end"));
  }
  if (info.end - info.begin != numel * esize) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": shape ", ShapeString(info.shape), " of ", dtype_name,
                                                   " needs ", numel * esize, " bytes but data_offsets [", info.begin,
                                                   ",", info.end, "] span ", info.end - info.begin));
  }
  return info;
}

}  // namespace

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  FM_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::Open(path));
  return Parse(std::move(file));
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(std::shared_ptr<const MappedFile> file) {
  if (file == nullptr) return absl::InvalidArgumentError("SafetensorsFile::Parse: null file");
  const std::string& path = file->path();
  const uint64_t size = file->size();
  if (size < 8) {
    return absl::DataLossError(
        absl::StrCat(path, ": file is ", size, " bytes, shorter than the 8-byte header length prefix"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file->data()[i];
  if (n > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", n, " exceeds the limit of ", kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (n > size - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", n, " runs past the end of the file (",
                                            size - 8, " bytes follow the length prefix); truncated?"));
  }
  std::string_view header(reinterpret_cast<const char*>(file->data()) + 8, n);
  if (header.empty() || header.front() != '{') {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header must be a JSON object starting with '{'"));
  }
  // The spec pads the header with spaces (0x20) only; strip them, and then the object must end the header.
  std::string_view body = header.substr(0, header.find_last_not_of(' ') + 1);
  auto parsed = ParseStrictJson(body, kMaxHeaderDepth);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header: ", parsed.status().message()));
  }
  const json& root = *parsed;
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header must be a JSON object, got ", root.type_name()));
  }
  if (body.back() != '}') {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header has bytes other than space padding after its JSON object"));
  }

  SafetensorsFile result;
  result.file_ = file;
  result.data_start_ = 8 + n;
  const uint64_t data_size = size - result.data_start_;
  result.tensors_.reserve(root.size());
  for (const auto& [name, value] : root.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": __metadata__ must be an object of strings, got ", value.type_name()));
      }
      for (const auto& [key, item] : value.items()) {
        if (!item.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(path, ": __metadata__ value of key ", QuoteForMessage(key),
                                                         " must be a string, got ", item.type_name()));
        }
        result.metadata_.emplace(key, item.get<std::string>());
      }
      result.has_metadata_ = true;
      continue;
    }
    FM_ASSIGN_OR_RETURN(SafetensorsTensorInfo info,
                        ParseEntry(absl::StrCat(path, ": tensor ", QuoteForMessage(name)), name, value));
    result.tensors_.push_back(std::move(info));
  }

  std::sort(result.tensors_.begin(), result.tensors_.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  uint64_t covered = 0;  // end of the bytes accounted for so far
  const SafetensorsTensorInfo* prev = nullptr;
  for (const SafetensorsTensorInfo& t : result.tensors_) {
    const std::string where = absl::StrCat(path, ": tensor ", QuoteForMessage(t.name));
    if (t.begin > covered) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": data_offsets [", t.begin, ",", t.end,
                                                     "] leave data bytes [", covered, ",", t.begin,
                                                     ") unused (tensors must tile the data section)"));
    }
    if (t.begin < covered) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": data_offsets [", t.begin, ",", t.end,
                                                     "] overlap tensor ", QuoteForMessage(prev->name), " [",
                                                     prev->begin, ",", prev->end, "]"));
    }
    if (t.end > data_size) {
      return absl::DataLossError(absl::StrCat(where, ": data_offsets [", t.begin, ",", t.end,
                                              "] run past the end of the data section (", data_size,
                                              " bytes); truncated?"));
    }
    covered = t.end;
    prev = &t;
  }
  if (covered != data_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": data section has ", data_size, " bytes but the tensors cover ", covered,
        prev ? absl::StrCat(" (last tensor ", QuoteForMessage(prev->name), " ends there)") : " (no tensors)"));
  }
  result.by_name_.reserve(result.tensors_.size());
  for (size_t i = 0; i < result.tensors_.size(); ++i) result.by_name_.emplace(result.tensors_[i].name, i);
  return result;
}

const SafetensorsTensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = by_name_.find(absl::string_view(name.data(), name.size()));
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<TensorView> SafetensorsFile::View(std::string_view name) const {
  const SafetensorsTensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat(path(), ": no tensor ", QuoteForMessage(name)));
  }
  return View(*info);
}

TensorView SafetensorsFile::View(const SafetensorsTensorInfo& info) const {
  return TensorView{info.dtype, info.shape, file_->data() + data_start_ + info.begin, info.nbytes()};
}

}  // namespace fm
