#include "server/api/page_token.h"

#include <charconv>

#include "absl/strings/escaping.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/formats/sha256.h"

namespace fm::server {
namespace {

std::string FilterDigest(std::string_view filters) { return Sha256Hex(filters.data(), filters.size()).substr(0, 16); }

}  // namespace

std::string EncodePageToken(const JobCursor& cursor, std::string_view filters) {
  std::string text = StrCat("v1|", cursor.create_time_micros, "|", cursor.job_id, "|", FilterDigest(filters));
  return absl::WebSafeBase64Escape(text);
}

absl::StatusOr<JobCursor> DecodePageToken(std::string_view token, std::string_view filters) {
  const absl::Status bad = absl::InvalidArgumentError("page_token: not a token of this query");
  std::string text;
  if (token.size() > 512 || !absl::WebSafeBase64Unescape(std::string(token), &text)) return bad;
  std::string_view rest(text);
  auto next = [&rest](std::string_view* field) {
    size_t bar = rest.find('|');
    if (bar == std::string_view::npos) {
      *field = rest;
      rest = {};
      return;
    }
    *field = rest.substr(0, bar);
    rest = rest.substr(bar + 1);
  };
  std::string_view version, micros, id, digest;
  next(&version);
  next(&micros);
  next(&id);
  next(&digest);
  if (version != "v1" || id.empty() || !rest.empty()) return bad;
  JobCursor cursor;
  auto r = std::from_chars(micros.data(), micros.data() + micros.size(), cursor.create_time_micros);
  if (r.ec != std::errc() || r.ptr != micros.data() + micros.size()) return bad;
  if (digest != FilterDigest(filters)) {
    return absl::InvalidArgumentError("page_token: the other fields must be the same as in the call that returned it");
  }
  cursor.job_id = std::string(id);
  return cursor;
}

}  // namespace fm::server
