// The text forms of an artifact manifest. ArtifactManifestText is the public checksum list ("<sha256>  <path>\n"
// per file, the format `sha256sum --check` reads), whose SHA-256 is manifest_sha256. The index is the store's own
// durable record of a promoted artifact (the attempt it came from plus every file's size and SHA-256); parsing it
// rebuilds the complete ArtifactManifest without touching the files.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "flashmorph/v1/artifact.pb.h"

namespace fm::server {

// "<sha256>  <path>\n" for every file of `manifest`, in its order.
std::string ArtifactManifestText(const flashmorph::v1::ArtifactManifest& manifest);

// Fills job ("jobs/<job_id>"), total_size_bytes and manifest_sha256 from the files (which must be sorted by path).
void FinishArtifactManifest(std::string_view job_id, flashmorph::v1::ArtifactManifest* manifest);

struct ArtifactIndex {
  int attempt = 0;                            // the attempt whose output was promoted
  flashmorph::v1::ArtifactManifest manifest;  // complete (job, files, totals, manifest_sha256)
};

// Index text: a header line, "attempt <n>", then "<sha256> <size> <path>" per file.
std::string SerializeArtifactIndex(int attempt, const flashmorph::v1::ArtifactManifest& manifest);

// Parses SerializeArtifactIndex's text. DATA_LOSS (naming `what`) for anything malformed: bad header, bad numbers,
// bad hashes, invalid or unsorted or duplicate paths.
absl::StatusOr<ArtifactIndex> ParseArtifactIndex(std::string_view text, std::string_view job_id, std::string_view what);

}  // namespace fm::server
