#include "server/artifacts/artifact_manifest.h"

#include <charconv>
#include <cstdint>

#include "server/artifacts/artifact_path.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/sha256.h"

namespace fm::server {
namespace {

constexpr std::string_view kIndexHeader = "flashmorph-artifact-index 1";

bool IsLowerHexSha256(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

template <typename Int>
bool ParseDecimal(std::string_view s, Int* out) {
  if (s.empty() || s.size() > 19 || (s.size() > 1 && s[0] == '0')) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && *out >= 0;
}

}  // namespace

std::string ArtifactManifestText(const flashmorph::v1::ArtifactManifest& manifest) {
  std::string text;
  for (const auto& f : manifest.files()) text += StrCat(f.sha256(), "  ", f.path(), "\n");
  return text;
}

void FinishArtifactManifest(std::string_view job_id, flashmorph::v1::ArtifactManifest* manifest) {
  manifest->set_job(StrCat("jobs/", job_id));
  int64_t total = 0;
  for (const auto& f : manifest->files()) total += f.size_bytes();
  manifest->set_total_size_bytes(total);
  std::string text = ArtifactManifestText(*manifest);
  manifest->set_manifest_sha256(Sha256Hex(text.data(), text.size()));
}

std::string SerializeArtifactIndex(int attempt, const flashmorph::v1::ArtifactManifest& manifest) {
  std::string text = StrCat(kIndexHeader, "\nattempt ", attempt, "\n");
  for (const auto& f : manifest.files()) text += StrCat(f.sha256(), " ", f.size_bytes(), " ", f.path(), "\n");
  return text;
}

absl::StatusOr<ArtifactIndex> ParseArtifactIndex(std::string_view text, std::string_view job_id,
                                                 std::string_view what) {
  ArtifactIndex index;
  int line_no = 0;
  auto corrupt = [&](std::string_view why) { return absl::DataLossError(StrCat(what, ": line ", line_no, ": ", why)); };
  size_t pos = 0;
  std::string_view previous_path;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) {
      ++line_no;
      return corrupt("no final newline");
    }
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line_no == 1) {
      if (line != kIndexHeader) return corrupt("not a flashmorph artifact index");
      continue;
    }
    if (line_no == 2) {
      constexpr std::string_view kAttempt = "attempt ";
      if (line.substr(0, kAttempt.size()) != kAttempt || !ParseDecimal(line.substr(kAttempt.size()), &index.attempt) ||
          index.attempt < 1) {
        return corrupt("expected 'attempt <n>'");
      }
      continue;
    }
    size_t sp1 = line.find(' ');
    size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos) return corrupt("expected '<sha256> <size> <path>'");
    std::string_view sha = line.substr(0, sp1);
    std::string_view size_text = line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view path = line.substr(sp2 + 1);
    int64_t size = 0;
    if (!IsLowerHexSha256(sha)) return corrupt("bad SHA-256");
    if (!ParseDecimal(size_text, &size)) return corrupt("bad size");
    if (!ValidateArtifactPath(path).ok()) return corrupt(StrCat("bad path '", EscapeForMessage(path), "'"));
    if (index.manifest.files_size() > 0 && !(previous_path < path)) return corrupt("paths not sorted or repeated");
    auto* f = index.manifest.add_files();
    f->set_path(std::string(path));
    f->set_size_bytes(size);
    f->set_sha256(std::string(sha));
    previous_path = path;
  }
  if (line_no < 2) return corrupt("truncated");
  FinishArtifactManifest(job_id, &index.manifest);
  return index;
}

}  // namespace fm::server
