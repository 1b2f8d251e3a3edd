#include "worker/engine/morph/stage_checkpoint.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/atomic_file.h"

namespace fm {

namespace fs = std::filesystem;

absl::StatusOr<std::optional<nlohmann::json>> StageCheckpoint::LoadState() const {
  const std::string path = dir_ + "/state.json";
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::optional<nlohmann::json>();
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::DataLossError(StrCat("stage checkpoint ", path, " is not a JSON object"));
  const std::string saved = j.value("fingerprint", std::string());
  if (saved != fingerprint_)
    return absl::FailedPreconditionError(
        StrCat("stage checkpoint ", path, " was written with other settings (", saved, " vs ", fingerprint_,
               "): use another work directory or remove it"));
  return std::optional<nlohmann::json>(std::move(j));
}

absl::StatusOr<std::map<std::string, at::Tensor>> StageCheckpoint::LoadFile(const nlohmann::json& state,
                                                                           const std::string& name) const {
  if (!state.contains("files") || !state["files"].contains(name) || !state["files"][name].is_string())
    return absl::DataLossError(StrCat("stage checkpoint ", dir_, "/state.json names no file '", name, "'"));
  return LoadTensors(dir_ + "/" + state["files"][name].get<std::string>());
}

absl::Status StageCheckpoint::Save(nlohmann::json state, const std::map<std::string, NamedTensorList>& groups,
                                   int64_t step) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return absl::InternalError(StrCat("cannot create ", dir_, ": ", ec.message()));
  std::set<std::string> keep = {"state.json"};
  nlohmann::json files = nlohmann::json::object();
  for (const auto& [name, tensors] : groups) {
    const std::string file = StrCat(name, ".", step, ".safetensors");
    FM_RETURN_IF_ERROR(SaveTensors(dir_ + "/" + file, tensors));
    files[name] = file;
    keep.insert(file);
  }
  state["files"] = files;
  state["fingerprint"] = fingerprint_;
  FM_RETURN_IF_ERROR(WriteFileAtomically(dir_ + "/state.json", state.dump(1)));
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string n = entry.path().filename().string();
    const bool stale_tensors = n.size() > 12 && n.substr(n.size() - 12) == ".safetensors";
    const bool crash_leftover = n.find(".tmp.") != std::string::npos;  // an AtomicFileWriter that never committed
    if (!keep.count(n) && (stale_tensors || crash_leftover)) fs::remove(entry.path(), ec);
  }
  return absl::OkStatus();
}

}  // namespace fm
