// The heartbeat thread of one lease. It renews the lease every `interval`, and sooner (but at most once per
// `min_gap`) when the tracker nudges it (stage change, gate snapshot, layout, checkpoint) or Flush() asks. Each new
// heartbeat gets the next heartbeat_sequence and drains the tracker's queue; after UNAVAILABLE / DEADLINE_EXCEEDED
// (or any other transient failure) it resends the same request, same number, so the server never appends its events
// twice. cancel_requested in a reply cancels the tracker. ABORTED (stale lease), NOT_FOUND and FAILED_PRECONDITION
// (the worker is no longer registered) end the lease: the tracker is cancelled, lost() turns true, and the pump stops.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "flashmorph/v1/worker_service.grpc.pb.h"
#include "worker/agent/progress_tracker.h"

namespace fm::worker {

class HeartbeatPump {
 public:
  struct Options {
    std::string lease_id;
    std::string bearer_token;
    std::chrono::milliseconds interval{10000};
    std::chrono::milliseconds min_gap{200};
    std::chrono::milliseconds rpc_timeout{10000};
    int max_events_per_heartbeat = 256;
  };

  HeartbeatPump(flashmorph::v1::WorkerService::StubInterface* stub, ProgressTracker* tracker, Options options);
  ~HeartbeatPump();  // Stop()s
  HeartbeatPump(const HeartbeatPump&) = delete;
  HeartbeatPump& operator=(const HeartbeatPump&) = delete;

  void Start();
  void Stop();

  // Sends what the tracker has queued now and waits until a heartbeat carrying all of it was accepted (true), or
  // the lease is lost, or `timeout` passes (false).
  bool Flush(std::chrono::milliseconds timeout);

  // An early heartbeat is wanted (rate-limited by min_gap).
  void Nudge();

  bool lost() const;                 // ABORTED / NOT_FOUND / FAILED_PRECONDITION
  bool needs_registration() const;   // FAILED_PRECONDITION: register again before the next lease
  bool cancel_requested() const;     // a reply had cancel_requested
  absl::Status lost_status() const;  // why the lease was lost
  int64_t sequence() const;          // the last heartbeat_sequence sent

 private:
  void Loop();

  flashmorph::v1::WorkerService::StubInterface* const stub_;
  ProgressTracker* const tracker_;
  const Options options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
  bool stop_ = false;
  bool urgent_ = false;
  bool lost_ = false;
  bool needs_registration_ = false;
  bool cancel_requested_ = false;
  absl::Status lost_status_;
  int64_t sequence_ = 0;
  int64_t flush_requested_ = 0;                              // generation asked for by Flush()
  int64_t flush_done_ = 0;                                   // generation covered by an accepted heartbeat
  std::optional<flashmorph::v1::HeartbeatRequest> pending_;  // built, not yet accepted (resent as is)
  int64_t pending_generation_ = 0;
};

}  // namespace fm::worker
