#include "worker/agent/heartbeat_pump.h"

#include <algorithm>

#include "worker/agent/rpc_util.h"

namespace fm::worker {

namespace pb = ::flashmorph::v1;
using Clock = std::chrono::steady_clock;

HeartbeatPump::HeartbeatPump(pb::WorkerService::StubInterface* stub, ProgressTracker* tracker, Options options)
    : stub_(stub), tracker_(tracker), options_(std::move(options)) {}

HeartbeatPump::~HeartbeatPump() { Stop(); }

void HeartbeatPump::Start() {
  tracker_->SetNudge([this] { Nudge(); });
  thread_ = std::thread([this] { Loop(); });
}

void HeartbeatPump::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  tracker_->SetNudge(nullptr);
}

void HeartbeatPump::Nudge() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    urgent_ = true;
  }
  cv_.notify_all();
}

bool HeartbeatPump::Flush(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t target = ++flush_requested_;
  urgent_ = true;
  cv_.notify_all();
  cv_.wait_for(lock, timeout, [&] { return flush_done_ >= target || lost_ || stop_; });
  return flush_done_ >= target && !lost_;
}

bool HeartbeatPump::lost() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lost_;
}

bool HeartbeatPump::needs_registration() const {
  std::lock_guard<std::mutex> lock(mu_);
  return needs_registration_;
}

bool HeartbeatPump::cancel_requested() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancel_requested_;
}

absl::Status HeartbeatPump::lost_status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lost_status_;
}

int64_t HeartbeatPump::sequence() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sequence_;
}

void HeartbeatPump::Loop() {
  const auto retry_delay = std::min<std::chrono::milliseconds>(options_.interval, std::chrono::milliseconds(1000));
  // The first heartbeat goes out at once: it tells the server the attempt started.
  Clock::time_point next = Clock::now();
  Clock::time_point last_sent = Clock::now() - options_.min_gap;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_ && !lost_) {
    Clock::time_point due = next;
    if (urgent_) due = std::min(due, last_sent + options_.min_gap);
    if (Clock::now() < due) {
      cv_.wait_until(lock, due);
      continue;  // re-evaluate: stop, a nudge, or the time has come
    }
    if (!pending_) {
      pb::HeartbeatRequest req;
      req.set_lease_id(options_.lease_id);
      req.set_heartbeat_sequence(++sequence_);
      pending_generation_ = flush_requested_;
      urgent_ = false;
      tracker_->FillHeartbeat(&req, options_.max_events_per_heartbeat);
      pending_ = std::move(req);
    } else {
      urgent_ = false;
    }
    const pb::HeartbeatRequest request = *pending_;
    const int64_t generation = pending_generation_;
    lock.unlock();
    pb::HeartbeatResponse response;
    std::unique_ptr<grpc::ClientContext> ctx = NewClientContext(options_.bearer_token, options_.rpc_timeout);
    const absl::Status status = FromGrpc(stub_->Heartbeat(ctx.get(), request, &response));
    lock.lock();
    const bool more = status.ok() && tracker_->HasQueuedEvents();
    last_sent = Clock::now();
    if (status.ok()) {
      pending_.reset();
      if (response.cancel_requested()) {
        cancel_requested_ = true;  // before the engine can see it, so the agent reports `cancelled`
        tracker_->RequestCancel();
      }
      if (!more) flush_done_ = std::max(flush_done_, generation);
      if (more || flush_requested_ > flush_done_) urgent_ = true;
      next = last_sent + options_.interval;
      cv_.notify_all();
      continue;
    }
    switch (status.code()) {
      case absl::StatusCode::kAborted:
      case absl::StatusCode::kNotFound:
      case absl::StatusCode::kFailedPrecondition:
        lost_ = true;
        lost_status_ = status;
        needs_registration_ = status.code() == absl::StatusCode::kFailedPrecondition;
        tracker_->RequestCancel();
        cv_.notify_all();
        break;
      case absl::StatusCode::kInvalidArgument:
        // The server refused something we sent (an event it does not take): drop the events, keep the renewal.
        pending_->clear_events();
        next = last_sent + retry_delay;
        break;
      default:
        // UNAVAILABLE, DEADLINE_EXCEEDED, ...: the same request again (same sequence) until the server answers;
        // if the lease lapses meanwhile, the answer is ABORTED.
        next = last_sent + retry_delay;
        break;
    }
  }
}

}  // namespace fm::worker
