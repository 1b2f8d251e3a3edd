// The ProgressSink the agent hands to the engine: it turns engine progress into what the next heartbeat carries
// (current stage, latest Progress, queued gate-vector / layout / log-line events, the stage checkpoint written) and
// answers the engine's CancelRequested() polls. Thread-safe: the engine reports from its thread while the
// heartbeat thread takes snapshots. Torch-free and gRPC-free (plain proto messages).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "flashmorph/v1/job_event.pb.h"
#include "flashmorph/v1/worker_service.pb.h"
#include "worker/engine/morph/progress.h"

namespace fm::worker {

class ProgressTracker final : public fm::ProgressSink {
 public:
  struct Options {
    int32_t attempt = 0;              // JobEvent.attempt and StageCheckpoint.attempt
    std::string worker_id;            // StageCheckpoint.worker_id
    std::string checkpoint_uri;       // StageCheckpoint.uri: the work dir every attempt of the job shares
    int64_t heads_per_layer = 0;      // > 0: the run is head-level and gate snapshots are L * H values
    bool head_level = false;          // HEAD method (gate snapshots are dropped when heads_per_layer is unknown)
    size_t max_queued_events = 1024;  // beyond this, the oldest gate / log events are dropped (layouts are kept)
  };

  // `stop`, when not null, also makes CancelRequested() true (the worker is shutting down).
  ProgressTracker(Options options, const std::atomic<bool>* stop);

  void OnProgress(const fm::ProgressEvent& event) override;
  bool CancelRequested() override;

  // From now on CancelRequested() is true (the server asked, or the lease is gone).
  void RequestCancel();

  // Queues an event for the next heartbeat (e.g. layout_selected from the result) and nudges an early heartbeat.
  void AddEvent(flashmorph::v1::JobEvent event);

  // Called outside the tracker's lock when something deserves an early heartbeat: a stage change, a gate snapshot,
  // a layout, a checkpoint.
  void SetNudge(std::function<void()> nudge);

  // Sets stage and progress, moves up to `max_events` queued events and the pending checkpoint into `request`.
  void FillHeartbeat(flashmorph::v1::HeartbeatRequest* request, int max_events);
  bool HasQueuedEvents() const;

  flashmorph::v1::ConversionJob::Stage stage() const;

 private:
  void QueueLocked(flashmorph::v1::JobEvent event);

  const Options options_;
  const std::atomic<bool>* const stop_;
  std::atomic<bool> cancel_{false};
  mutable std::mutex mu_;
  std::function<void()> nudge_;
  flashmorph::v1::ConversionJob::Stage stage_ = flashmorph::v1::ConversionJob::LOAD;
  flashmorph::v1::Progress progress_;
  std::deque<flashmorph::v1::JobEvent> events_;
  std::optional<flashmorph::v1::StageCheckpoint> checkpoint_;
};

// Progress for one engine event: step / total, tokens/s, the ETA from the stage's rate so far, the loss
// ("loss" metric, or the only loss term) and its terms (every metric but "lr" and "layer"; "tokens" becomes
// processed_tokens).
flashmorph::v1::Progress ProgressFromEvent(const fm::ProgressEvent& event);

// A LogLine.message: valid UTF-8 (invalid bytes become U+FFFD), one line, at most 4096 bytes.
std::string LogText(std::string_view text);

}  // namespace fm::worker
