#include "worker/agent/agent.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include <grpcpp/create_channel.h>

#include "worker/agent/artifact_upload.h"
#include "worker/agent/attempt_dirs.h"
#include "worker/agent/failure.h"
#include "worker/agent/heartbeat_pump.h"
#include "worker/agent/model_facts.h"
#include "worker/agent/progress_tracker.h"
#include "worker/agent/rpc_util.h"
#include "worker/agent/source_checksum.h"
#include "worker/engine/common/str_cat.h"

namespace fm::worker {
namespace {

namespace fs = std::filesystem;
namespace pb = ::flashmorph::v1;
using std::chrono::milliseconds;

milliseconds FromDuration(const google::protobuf::Duration& d, milliseconds fallback) {
  const int64_t ms = d.seconds() * 1000 + d.nanos() / 1'000'000;
  return ms > 0 ? milliseconds(ms) : fallback;
}

void SetDuration(milliseconds ms, google::protobuf::Duration* d) {
  d->set_seconds(ms.count() / 1000);
  d->set_nanos(static_cast<int32_t>(ms.count() % 1000) * 1'000'000);
}

void RemoveAll(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

// The engine exports beside output_dir (<out>.partial, <out>.old) before swapping it in.
void DiscardOutputs(const AttemptDirs& dirs) {
  if (dirs.upload) {
    RemoveAll(fs::path(dirs.output_dir).parent_path().string());  // <work_root>/<id>/attempt-<n>
    return;
  }
  for (const char* suffix : {"", ".partial", ".old"}) RemoveAll(dirs.output_dir + suffix);
}

pb::RegisterWorkerRequest RegistrationOf(const AgentOptions& o) {
  pb::RegisterWorkerRequest r;
  r.set_worker_id(o.worker_id);
  r.set_hostname(o.hostname);
  std::map<std::pair<std::string, int64_t>, int32_t> models;
  for (const fm::GpuInfo& g : o.devices.gpus) ++models[{g.name, g.memory_bytes}];
  for (const auto& [key, count] : models) {
    pb::GpuInventory* g = r.add_gpus();
    g->set_model(key.first);
    g->set_memory_bytes(key.second);
    g->set_count(count);
  }
  r.set_cpu_count(o.devices.cpu_count);
  r.set_host_memory_bytes(o.devices.host_memory_bytes);
  r.set_engine_version(o.engine_version);
  pb::WorkerCapabilities* c = r.mutable_capabilities();
  for (auto b : {pb::ConversionSpec::LIGHTNING, pb::ConversionSpec::GLA, pb::ConversionSpec::GATED_DELTANET})
    c->add_branch_kinds(b);
  for (auto m :
       {pb::ConversionSpec::FLASHMORPH, pb::ConversionSpec::UNIFORM, pb::ConversionSpec::NLL, pb::ConversionSpec::HEAD})
    c->add_selection_methods(m);
  c->set_cuda_version(o.devices.cuda_version);
  c->set_shared_filesystem(o.shared_filesystem);
  return r;
}

}  // namespace

bool IsValidWorkerId(const std::string& id) {
  if (id.empty() || id.size() > 63) return false;
  return std::all_of(id.begin(), id.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; });
}

WorkerAgent::WorkerAgent(AgentOptions options, EngineRunner* engine) : options_(std::move(options)), engine_(engine) {}

WorkerAgent::~WorkerAgent() = default;

void WorkerAgent::Log(LogLevel level, const std::string& message) const {
  if (options_.log) {
    options_.log(level, message);
    return;
  }
  const char* tag = level == LogLevel::kError ? "E" : level == LogLevel::kWarning ? "W" : "I";
  std::fprintf(stderr, "%s flashmorph-worker %s: %s\n", tag, options_.worker_id.c_str(), message.c_str());
}

bool WorkerAgent::Sleep(milliseconds d, const std::atomic<bool>* stop) const {
  const auto end = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < end) {
    if (stop && stop->load()) return false;
    std::this_thread::sleep_for(std::min<milliseconds>(milliseconds(20), d));
  }
  return !(stop && stop->load());
}

absl::Status WorkerAgent::Register(const std::atomic<bool>* stop) {
  const pb::RegisterWorkerRequest request = RegistrationOf(options_);
  milliseconds backoff = options_.initial_backoff;
  while (true) {
    pb::RegisterWorkerResponse response;
    std::unique_ptr<grpc::ClientContext> ctx = NewClientContext(options_.bearer_token, options_.rpc_timeout);
    absl::Status s = FromGrpc(stub_->RegisterWorker(ctx.get(), request, &response));
    if (s.ok()) {
      heartbeat_interval_ = FromDuration(response.heartbeat_interval(), milliseconds(10000));
      lease_duration_ = FromDuration(response.lease_duration(), milliseconds(60000));
      max_lease_wait_ = FromDuration(response.max_lease_wait(), milliseconds(0));
      Log(LogLevel::kInfo, StrCat("registered with ", options_.server_address, " (heartbeat every ",
                                  heartbeat_interval_.count(), " ms, lease ", lease_duration_.count(), " ms)"));
      return absl::OkStatus();
    }
    if (!IsTransient(s.code())) return s;
    Log(LogLevel::kWarning, StrCat("registration: ", s.ToString(), "; retrying in ", backoff.count(), " ms"));
    if (!Sleep(backoff, stop)) return absl::CancelledError("stopped before registering");
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

absl::Status WorkerAgent::LeaseOnce(pb::LeaseJobResponse* response, const std::atomic<bool>* stop) {
  pb::LeaseJobRequest request;
  request.set_worker_id(options_.worker_id);
  milliseconds wait = options_.lease_wait;
  if (max_lease_wait_.count() > 0) wait = std::min(wait, max_lease_wait_);
  SetDuration(wait, request.mutable_wait());
  std::unique_ptr<grpc::ClientContext> ctx = NewClientContext(options_.bearer_token, wait + options_.rpc_timeout);
  // The callback API, so that a stop request cancels the long poll at once. The state is shared with the callback,
  // which may still be unwinding when this function returns.
  struct Call {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status result;
  };
  auto call = std::make_shared<Call>();
  stub_->async()->LeaseJob(ctx.get(), &request, response, [call](grpc::Status s) {
    std::lock_guard<std::mutex> lock(call->mu);
    call->result = std::move(s);
    call->done = true;
    call->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(call->mu);
  bool cancelled = false;
  while (!call->cv.wait_for(lock, milliseconds(20), [&] { return call->done; })) {
    if (!cancelled && stop && stop->load()) {
      ctx->TryCancel();
      cancelled = true;
    }
  }
  return FromGrpc(call->result);
}

absl::Status WorkerAgent::Complete(const pb::CompleteJobRequest& request) {
  // Retried while the server is unavailable, for about a lease duration (after that the lease has lapsed anyway).
  const auto give_up = std::chrono::steady_clock::now() + std::max(lease_duration_, milliseconds(10000));
  milliseconds backoff = options_.initial_backoff;
  while (true) {
    pb::CompleteJobResponse response;
    std::unique_ptr<grpc::ClientContext> ctx = NewClientContext(options_.bearer_token, options_.rpc_timeout);
    absl::Status s = FromGrpc(stub_->CompleteJob(ctx.get(), request, &response));
    if (s.ok()) {
      Log(LogLevel::kInfo, StrCat("completed lease ", request.lease_id(), ": job is now ",
                                  pb::ConversionJob::State_Name(response.state())));
      return s;
    }
    if (!IsTransient(s.code()) || std::chrono::steady_clock::now() + backoff > give_up) return s;
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

bool WorkerAgent::RunLease(const pb::Lease& lease, const std::atomic<bool>* stop) {
  const pb::ConversionJob& job = lease.job();
  const pb::ConversionSpec& spec = job.spec();
  Log(LogLevel::kInfo, StrCat("leased ", job.name(), " attempt ", lease.attempt(), " (lease ", lease.lease_id(), ")"));

  // Directories and options. A lease we cannot map is the spec's fault: a user error, unless the code says otherwise.
  absl::StatusOr<AttemptDirs> dirs = ChooseAttemptDirs(lease, options_.shared_filesystem, options_.work_root);
  absl::StatusOr<fm::ConversionOptions> options =
      dirs.ok() ? OptionsFromSpec(spec, dirs->output_dir, dirs->work_dir, options_.device)
                : absl::StatusOr<fm::ConversionOptions>(dirs.status());

  ProgressTracker::Options to;
  to.attempt = lease.attempt();
  to.worker_id = options_.worker_id;
  to.head_level = spec.selection_method() == pb::ConversionSpec::HEAD;
  int64_t needle_samples = 0;
  if (options.ok()) {
    to.checkpoint_uri = options->work_dir;
    needle_samples = options->evaluation.needle_samples;
    absl::StatusOr<ModelFacts> facts = ReadModelFacts(options->model_path);
    if (facts.ok()) {
      to.heads_per_layer = facts->shape.num_heads;
      if (spec.output().dtype() == pb::OutputOptions::DTYPE_UNSPECIFIED) {
        const std::string dtype = ExportDtypeForSource(facts->torch_dtype);
        if (!dtype.empty()) options->export_dtype = dtype;
      }
      fm::ConversionOptions scaled = *options;
      fm::ScaleToModel(facts->shape, options->device.rfind("cuda", 0) == 0, scaled);
      needle_samples = scaled.evaluation.needle_samples;
    }
  }
  ProgressTracker tracker(to, stop);
  HeartbeatPump::Options po;
  po.lease_id = lease.lease_id();
  po.bearer_token = options_.bearer_token;
  po.interval = heartbeat_interval_;
  po.min_gap = std::min(options_.min_heartbeat_gap, heartbeat_interval_);
  po.rpc_timeout = std::min(options_.rpc_timeout, std::max(heartbeat_interval_, milliseconds(1000)));
  HeartbeatPump pump(stub_.get(), &tracker, po);
  pump.Start();

  // Run.
  absl::StatusOr<fm::ConversionResult> result = absl::UnknownError("not run");
  if (!options.ok()) {
    result = options.status();
  } else if (stop && stop->load()) {
    result = absl::CancelledError("the worker is stopping");
  } else {
    std::error_code ec;
    if (dirs->upload) RemoveAll(fs::path(dirs->output_dir).parent_path().string());
    fs::create_directories(fs::path(dirs->output_dir).parent_path(), ec);
    absl::Status pre =
        ec ? absl::InternalError(StrCat("cannot create the parent of ", dirs->output_dir, ": ", ec.message()))
           : VerifySourceChecksum(options->model_path, spec.model().source_sha256(),
                                  [&] { return tracker.CancelRequested(); });
    if (pre.ok()) {
      result = engine_->Run(*options, &tracker);
    } else {
      result = pre;
    }
  }

  // Outcome.
  pb::CompleteJobRequest complete;
  complete.set_lease_id(lease.lease_id());
  bool terminal = true;  // the job will not come back to this worker (local checkpoints can go)
  auto fail = [&](const absl::Status& s, bool retryable) {
    *complete.mutable_failure() = FailureFromStatus(s);
    complete.mutable_failure()->set_retryable(retryable);
    terminal = !retryable;
    pb::JobEvent ev;
    ev.mutable_log()->set_severity(pb::LogLine::SEVERITY_ERROR);
    ev.mutable_log()->set_message(LogText(s.ToString()));
    ev.mutable_log()->set_source("worker");
    tracker.AddEvent(std::move(ev));
  };
  bool upload_aborted = false;  // UploadArtifact answered ABORTED: the lease is stale
  if (pump.lost()) {
    // Fall through to the discard below.
  } else if (pump.cancel_requested()) {
    complete.mutable_cancelled();
  } else if (result.ok()) {
    pb::ConversionResult proto = ResultToProto(*result, spec, {lease.attempt(), needle_samples});
    for (int i = 0; i < proto.layouts_size(); ++i) {
      pb::JobEvent ev;
      *ev.mutable_layout_selected() = proto.layouts(i);
      tracker.AddEvent(std::move(ev));
    }
    const std::string& expected = spec.model().source_sha256();
    if (!expected.empty() && !proto.source_sha256().empty() && proto.source_sha256() != expected) {
      fail(absl::FailedPreconditionError(StrCat("spec.model.source_sha256: the engine read a checkpoint with SHA-256 ",
                                                proto.source_sha256(), ", not ", expected)),
           false);
    } else if (dirs->upload) {
      pump.Flush(std::max(lease_duration_, milliseconds(1000)));  // layouts before a possibly long upload
      UploadOptions uo;
      uo.lease_id = lease.lease_id();
      uo.bearer_token = options_.bearer_token;
      uo.base_timeout = options_.rpc_timeout;
      absl::Status up = UploadDirectory(stub_.get(), dirs->output_dir, uo, [&] { return pump.lost(); });
      if (up.ok()) {
        *complete.mutable_result() = std::move(proto);
      } else if (up.code() == absl::StatusCode::kAborted || pump.lost()) {
        Log(LogLevel::kWarning, StrCat("upload for ", job.name(), ": ", up.ToString()));
        upload_aborted = true;
      } else {
        fail(absl::Status(up.code(), StrCat("uploading the outputs: ", up.ToString())), true);  // infrastructure
      }
    } else {
      *complete.mutable_result() = std::move(proto);
    }
  } else if (stop && stop->load() && absl::IsCancelled(result.status())) {
    fail(absl::UnavailableError(StrCat("worker ", options_.worker_id,
                                       " is shutting down; a later attempt resumes from the stage checkpoints")),
         true);
  } else {
    fail(result.status(), IsRetryable(result.status().code()));
  }

  // Everything queued (layouts, the last log lines) goes out before the outcome; no heartbeat after it.
  if (!pump.lost() && !upload_aborted) pump.Flush(std::max(lease_duration_, milliseconds(1000)));
  pump.Stop();
  bool completed = false;
  if (!pump.lost() && !upload_aborted) {
    absl::Status s = Complete(complete);
    completed = s.ok();
    if (!s.ok()) Log(LogLevel::kWarning, StrCat("CompleteJob for ", job.name(), ": ", s.ToString()));
  }
  const bool reregister = pump.needs_registration();
  if (!completed) {
    Log(LogLevel::kWarning, StrCat(job.name(), " attempt ", lease.attempt(), ": lease lost (",
                                   pump.lost()      ? pump.lost_status().ToString()
                                   : upload_aborted ? "UploadArtifact: ABORTED"
                                                    : "CompleteJob failed",
                                   "); outputs discarded"));
    if (dirs.ok()) DiscardOutputs(*dirs);
    return reregister;
  }
  if (!dirs.ok()) return reregister;
  if (dirs->upload) {
    DiscardOutputs(*dirs);  // local copies of what was uploaded (or of a failed attempt)
    if (terminal) RemoveAll(dirs->work_dir);
    if (terminal) {
      std::error_code ec;
      fs::remove(fs::path(dirs->work_dir).parent_path(), ec);  // <work_root>/<id> when empty
    }
  } else if (!complete.has_result()) {
    DiscardOutputs(*dirs);  // a failed or cancelled attempt's partial export
  }
  return reregister;
}

absl::Status WorkerAgent::Run(std::atomic<bool>* stop) {
  if (!IsValidWorkerId(options_.worker_id))
    return absl::InvalidArgumentError(StrCat("worker id '", options_.worker_id, "': use 1-63 characters of [a-z0-9-]"));
  if (options_.server_address.empty()) return absl::InvalidArgumentError("server address: is required");
  if (engine_ == nullptr) return absl::InvalidArgumentError("engine: is required");
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(8 << 20);
  args.SetMaxReceiveMessageSize(64 << 20);
  channel_ = grpc::CreateCustomChannel(
      options_.server_address, options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials(), args);
  stub_ = pb::WorkerService::NewStub(channel_);

  bool registered = false;
  milliseconds backoff = options_.initial_backoff;
  while (!(stop && stop->load())) {
    if (!registered) {
      absl::Status s = Register(stop);
      if (absl::IsCancelled(s) && stop && stop->load()) break;
      if (!s.ok()) return s;
      registered = true;
    }
    pb::LeaseJobResponse response;
    absl::Status s = LeaseOnce(&response, stop);
    if (!s.ok()) {
      if (stop && stop->load()) break;
      if (absl::IsFailedPrecondition(s)) {
        Log(LogLevel::kWarning, StrCat("LeaseJob: ", s.ToString(), "; registering again"));
        registered = false;
        continue;
      }
      if (s.code() == absl::StatusCode::kUnauthenticated || s.code() == absl::StatusCode::kPermissionDenied) return s;
      Log(LogLevel::kWarning, StrCat("LeaseJob: ", s.ToString(), "; retrying in ", backoff.count(), " ms"));
      if (!Sleep(backoff, stop)) break;
      backoff = std::min(backoff * 2, options_.max_backoff);
      continue;
    }
    backoff = options_.initial_backoff;
    if (!response.has_lease()) continue;
    if (RunLease(response.lease(), stop)) registered = false;
    ++jobs_run_;
    if (options_.max_jobs > 0 && jobs_run_ >= options_.max_jobs) break;
  }
  Log(LogLevel::kInfo, StrCat("stopping after ", jobs_run_, " job(s)"));
  return absl::OkStatus();
}

}  // namespace fm::worker
