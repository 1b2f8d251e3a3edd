// `flashmorph submit`: builds a CreateConversionJobRequest from a spec file and flags and creates the job.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <random>

#include <google/protobuf/util/time_util.h>

#include "absl/time/time.h"
#include "client/cli/commands.h"
#include "client/cli/job_format.h"
#include "client/cli/spec_file.h"
#include "google/longrunning/operations.pb.h"
#include "worker/engine/common/absl_compat.h"
#include "worker/engine/common/str_cat.h"

namespace fm::client {
namespace {

using flashmorph::v1::AttentionBudget;
using flashmorph::v1::ConversionSpec;
using flashmorph::v1::CreateConversionJobRequest;

std::string EnumKey(std::string s) {
  for (char& c : s) c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

template <typename T>
bool ParseInt(const std::string& s, T* out) {
  const char* b = s.data();
  const char* e = s.data() + s.size();
  auto r = std::from_chars(b, e, *out);
  return !s.empty() && r.ec == std::errc() && r.ptr == e;
}

absl::StatusOr<AttentionBudget> ParseBudget(BudgetFlag kind, const std::string& text) {
  AttentionBudget b;
  switch (kind) {
    case BudgetFlag::kLayers: {
      int32_t k = 0;
      if (!ParseInt(text, &k) || k <= 0) {
        return absl::InvalidArgumentError(StrCat("--fa-layers ", text, ": expected a positive layer count"));
      }
      b.set_full_attention_layers(k);
      return b;
    }
    case BudgetFlag::kHeads: {
      int32_t k = 0;
      if (!ParseInt(text, &k) || k <= 0) {
        return absl::InvalidArgumentError(StrCat("--fa-heads ", text, ": expected a positive head count"));
      }
      b.set_full_attention_heads(k);
      return b;
    }
    case BudgetFlag::kRatio: {
      std::string t = text;
      const bool percent = !t.empty() && t.back() == '%';
      if (percent) t.pop_back();
      double r = 0;
      auto res = std::from_chars(t.data(), t.data() + t.size(), r);
      if (t.empty() || res.ec != std::errc() || res.ptr != t.data() + t.size()) {
        return absl::InvalidArgumentError(StrCat("--fa-ratio ", text, ": expected a ratio such as 0.25 or 25%"));
      }
      if (percent) r /= 100;
      if (!(r > 0 && r < 1)) return absl::InvalidArgumentError(StrCat("--fa-ratio ", text, ": must be in (0, 1)"));
      b.set_full_attention_ratio(r);
      return b;
    }
  }
  return absl::InvalidArgumentError("unknown budget flag");
}

absl::Status ApplyDeadline(const std::string& text, ConversionSpec& spec) {
  google::protobuf::Timestamp ts;
  if (google::protobuf::util::TimeUtil::FromString(text, &ts)) {
    *spec.mutable_deadline() = ts;
    return absl::OkStatus();
  }
  absl::Duration d;
  if (!absl::ParseDuration(Sv(text), &d) || d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        StrCat("--deadline ", text, ": expected an RFC 3339 time (2030-01-02T03:04:05Z) or a duration (90m, 2h)"));
  }
  const absl::Time t = absl::Now() + d;
  ts.set_seconds(absl::ToUnixSeconds(t));
  *spec.mutable_deadline() = ts;
  return absl::OkStatus();
}

absl::Status ApplyData(const SubmitFlags& f, ConversionSpec& spec) {
  std::string fmt = f.data_format;
  if (fmt == "auto") {
    fmt = EndsWith(f.data, ".jsonl") || EndsWith(f.data, ".json") ? "jsonl"
          : EndsWith(f.data, ".u16")                              ? "u16"
          : EndsWith(f.data, ".u32")                              ? "u32"
                                                                  : "";
    if (fmt.empty()) {
      return absl::InvalidArgumentError(StrCat("--data ", f.data, ": say --data-format jsonl|u16|u32"));
    }
  }
  auto* data = spec.mutable_data();
  if (fmt == "jsonl") {
    data->mutable_jsonl()->set_path(f.data);
  } else if (fmt == "u16" || fmt == "u32") {
    data->mutable_token_file()->set_path(f.data);
    data->mutable_token_file()->set_dtype(fmt == "u16" ? flashmorph::v1::DataSource::TokenFile::UINT16
                                                       : flashmorph::v1::DataSource::TokenFile::UINT32);
  } else {
    return absl::InvalidArgumentError(StrCat("--data-format ", f.data_format, ": expected auto|jsonl|u16|u32"));
  }
  return absl::OkStatus();
}

std::string JobOfOperation(const google::longrunning::Operation& op) {
  flashmorph::v1::ConversionMetadata meta;
  if (op.has_metadata() && op.metadata().UnpackTo(&meta) && !meta.job().empty()) return meta.job();
  return JobName(op.name());
}

}  // namespace

std::string NewUuid4() {
  std::random_device rd;
  uint8_t b[16];
  for (int i = 0; i < 16; i += 4) {
    const uint32_t v = rd();
    for (int j = 0; j < 4; ++j) b[i + j] = static_cast<uint8_t>(v >> (8 * j));
  }
  b[6] = static_cast<uint8_t>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<uint8_t>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  char out[37];
  std::snprintf(out, sizeof out, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return out;
}

absl::StatusOr<CreateConversionJobRequest> BuildCreateRequest(const SubmitFlags& f) {
  CreateConversionJobRequest req;
  ConversionSpec& spec = *req.mutable_spec();
  if (!f.spec_file.empty()) {
    auto loaded = LoadSpecFile(f.spec_file);
    if (!loaded.ok()) return loaded.status();
    spec = std::move(*loaded);
  }
  if (!f.model.empty()) spec.mutable_model()->set_uri(f.model);
  if (!f.revision.empty()) spec.mutable_model()->set_revision(f.revision);
  if (!f.source_sha256.empty()) spec.mutable_model()->set_source_sha256(f.source_sha256);
  if (!f.budgets.empty()) {
    spec.clear_budgets();
    for (const auto& [kind, text] : f.budgets) {
      auto b = ParseBudget(kind, text);
      if (!b.ok()) return b.status();
      *spec.add_budgets() = *b;
    }
  }
  if (!f.method.empty()) {
    ConversionSpec::SelectionMethod m;
    if (!ConversionSpec::SelectionMethod_Parse(EnumKey(f.method), &m) ||
        m == ConversionSpec::SELECTION_METHOD_UNSPECIFIED) {
      return absl::InvalidArgumentError(StrCat("--method ", f.method, ": expected flashmorph|uniform|nll|head"));
    }
    spec.set_selection_method(m);
  }
  if (!f.branch.empty()) {
    ConversionSpec::BranchKind k;
    if (!ConversionSpec::BranchKind_Parse(EnumKey(f.branch), &k) || k == ConversionSpec::BRANCH_KIND_UNSPECIFIED) {
      return absl::InvalidArgumentError(StrCat("--branch ", f.branch, ": expected lightning|gla|gated_deltanet"));
    }
    spec.set_branch_kind(k);
  }
  if (f.seed) spec.set_seed(*f.seed);
  if (f.priority) spec.set_priority(*f.priority);
  for (const std::string& kv : f.labels) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(StrCat("--label ", kv, ": expected key=value"));
    }
    (*spec.mutable_labels())[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  if (!f.deadline.empty()) {
    if (absl::Status s = ApplyDeadline(f.deadline, spec); !s.ok()) return s;
  }
  if (f.gpus) spec.mutable_resources()->set_gpus(*f.gpus);
  if (f.shard_layers) spec.mutable_resources()->set_shard_layers(true);
  if (f.calibration_tokens) spec.mutable_calibration()->set_train_tokens(*f.calibration_tokens);
  if (f.gate_tokens) spec.mutable_gates()->set_train_tokens(*f.gate_tokens);
  if (f.min_context) spec.mutable_gates()->set_min_context_tokens(*f.min_context);
  if (f.max_context) spec.mutable_gates()->set_max_context_tokens(*f.max_context);
  if (f.passkeys) spec.mutable_gates()->set_passkeys_per_sample(*f.passkeys);
  if (f.gate_batch) spec.mutable_gates()->set_samples_per_step(*f.gate_batch);
  if (f.lambda) spec.mutable_gates()->set_sparsity_lambda(*f.lambda);
  if (f.distill_tokens) spec.mutable_post_training()->set_distill_tokens(*f.distill_tokens);
  if (f.long_context_tokens) spec.mutable_post_training()->set_long_context_tokens(*f.long_context_tokens);
  if (f.train_all) spec.mutable_post_training()->set_trainable(flashmorph::v1::PostTrainingSettings::ALL);
  if (f.held_out_tokens) spec.mutable_evaluation()->set_held_out_tokens(*f.held_out_tokens);
  if (f.needle_samples) spec.mutable_evaluation()->set_needle_samples_per_length(*f.needle_samples);
  if (!f.needle_context.empty()) {
    spec.mutable_evaluation()->clear_needle_context_tokens();
    for (int32_t n : f.needle_context) spec.mutable_evaluation()->add_needle_context_tokens(n);
  }
  if (!f.data.empty()) {
    if (absl::Status s = ApplyData(f, spec); !s.ok()) return s;
  }
  if (!f.export_dtype.empty()) {
    flashmorph::v1::OutputOptions::Dtype d;
    if (!flashmorph::v1::OutputOptions::Dtype_Parse(EnumKey(f.export_dtype), &d) ||
        d == flashmorph::v1::OutputOptions::DTYPE_UNSPECIFIED) {
      return absl::InvalidArgumentError(
          StrCat("--export-dtype ", f.export_dtype, ": expected bfloat16|float16|float32"));
    }
    spec.mutable_output()->set_dtype(d);
  }
  if (f.max_shard_bytes) spec.mutable_output()->set_max_shard_bytes(*f.max_shard_bytes);

  if (spec.model().uri().empty()) {
    return absl::InvalidArgumentError("no model: give --model or model.uri in the --spec file");
  }
  if (spec.budgets().empty()) {
    return absl::InvalidArgumentError(
        "no budget: give --fa-layers, --fa-ratio or --fa-heads, or budgets in the spec file");
  }
  req.set_tenant(f.tenant);
  req.set_request_id(f.request_id.empty() ? NewUuid4() : f.request_id);
  return req;
}

int RunSubmit(const SubmitFlags& flags, Connection& conn, const CliIo& io) {
  auto req = BuildCreateRequest(flags);
  if (!req.ok()) return PrintError(io, req.status());
  google::longrunning::Operation op;
  const grpc::Status s =
      conn.CallWithRetry([&](grpc::ClientContext& ctx) { return conn.stub().CreateConversionJob(&ctx, *req, &op); });
  if (!s.ok()) return PrintError(io, s);
  const std::string job = JobOfOperation(op);
  if (flags.json) {
    io.out << ToJson(op) << "\n";
  } else {
    io.out << job << "\n";
  }
  io.out.flush();
  if (!flags.watch) return kExitOk;
  WatchFlags w;
  w.job = job;
  w.json = flags.json;
  return RunWatch(w, conn, io);
}

}  // namespace fm::client
