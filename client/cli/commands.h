// The service commands of `flashmorph` as plain functions over a Connection and two output streams, so tests run
// them in-process. Each returns the process exit code and prints RPC errors as "error: <CODE>: <message>" on the
// error stream.
//
// Exit codes: 0 success (watch: the job SUCCEEDED); 1 the watched job FAILED; 2 usage, RPC, file or integrity
// error; 3 the watched job was CANCELLED.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/cli/connection.h"
#include "flashmorph/v1/conversion_service.pb.h"

namespace fm::client {

inline constexpr int kExitOk = 0;
inline constexpr int kExitJobFailed = 1;
inline constexpr int kExitError = 2;
inline constexpr int kExitJobCancelled = 3;

struct CliIo {
  std::ostream& out;
  std::ostream& err;
  bool tty = false;  // `out` is a terminal: progress lines are redrawn in place
};

// Prints "error: <CODE>: <message>" and returns kExitError.
int PrintError(const CliIo& io, const absl::Status& status);
int PrintError(const CliIo& io, const grpc::Status& status);

// --- submit -----------------------------------------------------------------------------------------------------
enum class BudgetFlag { kLayers, kRatio, kHeads };

// What `submit` was given. Unset optionals and empty strings/vectors leave the spec file's value (or the default).
struct SubmitFlags {
  std::string spec_file;                                    // --spec: YAML or JSON ConversionSpec
  std::string model, revision, source_sha256;               // model.uri / revision / source_sha256
  std::vector<std::pair<BudgetFlag, std::string>> budgets;  // in command-line order; replace the file's budgets
  std::string method, branch;                               // flashmorph|uniform|nll|head; lightning|gla|gated_deltanet
  std::optional<uint64_t> seed;
  std::optional<int32_t> priority;
  std::vector<std::string> labels;  // "key=value", merged over the file's labels
  std::string deadline;             // RFC 3339 time, or a duration from now such as "90m" or "2h"
  std::string tenant;
  std::string request_id;  // empty: a fresh UUIDv4
  std::optional<int32_t> gpus;
  bool shard_layers = false;
  std::optional<int64_t> calibration_tokens, gate_tokens, distill_tokens, long_context_tokens, held_out_tokens;
  std::optional<int32_t> min_context, max_context, passkeys, needle_samples, gate_batch;
  std::optional<double> lambda;
  std::vector<int32_t> needle_context;
  bool train_all = false;
  std::string data, data_format = "auto";  // jsonl | u16 | u32 | auto (by extension)
  std::string export_dtype;                // bfloat16 | float16 | float32
  std::optional<int64_t> max_shard_bytes;
  bool json = false, watch = false;
};

// A random (version 4) UUID, e.g. "1b4e28ba-2fa1-41d2-883f-0016d3cca427".
std::string NewUuid4();

// The request the flags describe (spec file first, flags over it). INVALID_ARGUMENT for bad values, naming the flag.
absl::StatusOr<flashmorph::v1::CreateConversionJobRequest> BuildCreateRequest(const SubmitFlags& flags);

// Creates the job (retrying UNAVAILABLE with the same request_id), prints its name (or the Operation as JSON), and
// with `watch` watches it.
int RunSubmit(const SubmitFlags& flags, Connection& conn, const CliIo& io);

// --- watch ------------------------------------------------------------------------------------------------------
struct WatchFlags {
  std::string job;
  int64_t after_sequence = 0;
  bool json = false;  // one proto3 JSON JobEvent per line
};

// Streams the job's events until it ends, resuming after UNAVAILABLE or a broken stream with after_sequence = the
// last sequence printed (so no event is lost or repeated). Exit code from the job's final state.
int RunWatch(const WatchFlags& flags, Connection& conn, const CliIo& io);

// --- get / list / cancel / layout --------------------------------------------------------------------------------
int RunGet(const std::string& job, bool json, Connection& conn, const CliIo& io);

struct ListFlags {
  std::string tenant;
  std::vector<std::string> states;  // state names, any case
  int32_t page_size = 0;
  std::string page_token;
  bool all = false;   // follow next_page_token to the last page
  bool json = false;  // the ListConversionJobsResponse (all pages merged with --all)
};
int RunList(const ListFlags& flags, Connection& conn, const CliIo& io);

int RunCancel(const std::string& job, bool json, Connection& conn, const CliIo& io);

// Prints every layout of a SUCCEEDED job (FAILED_PRECONDITION for a job without a result).
int RunLayout(const std::string& job, bool json, Connection& conn, const CliIo& io);

// --- download ---------------------------------------------------------------------------------------------------
struct DownloadStats {
  int files_downloaded = 0, files_skipped = 0;
  int64_t bytes_received = 0;
};

// Checks that a manifest path is relative, '/'-separated, without empty, "." or ".." components.
absl::Status CheckArtifactPath(const std::string& path);

// Downloads the artifact of `job` into `out_dir`: each file goes to <out_dir>/<path>.part (continuing an existing
// .part from its size with read_offset, and a broken stream from the last byte received), is checked against the
// manifest's size and sha256 (a mismatch deletes the .part and is DATA_LOSS) and is renamed to its final name.
// Files already present with the right size and sha256 are skipped. Progress lines go to `log`.
absl::Status DownloadArtifact(Connection& conn, const std::string& job, const std::string& out_dir, std::ostream& log,
                              DownloadStats* stats = nullptr);

int RunDownload(const std::string& job, const std::string& out_dir, Connection& conn, const CliIo& io);

}  // namespace fm::client
