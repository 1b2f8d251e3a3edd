#include "worker/agent/progress_tracker.h"

#include <chrono>
#include <cmath>
#include <utility>

#include "worker/agent/spec_options.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/common/utf8.h"

namespace fm::worker {
namespace {

namespace pb = ::flashmorph::v1;

constexpr size_t kMaxLogBytes = 4096;

void SetNow(google::protobuf::Timestamp* t) {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now).count();
  t->set_seconds(ns / 1'000'000'000);
  t->set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
}

std::string MetricsText(const fm::ProgressEvent& e) {
  std::string s = StrCat(fm::StageName(e.stage), e.phase.empty() ? "" : " ", e.phase, ":");
  for (const auto& [k, v] : e.metrics) s += StrCat(" ", k, "=", v);
  return s;
}

}  // namespace

std::string LogText(std::string_view text) {
  std::string s = fm::Utf8Lossy(text);
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  if (s.size() > kMaxLogBytes) {
    size_t cut = kMaxLogBytes;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    s.resize(cut);
  }
  return s;
}

pb::Progress ProgressFromEvent(const fm::ProgressEvent& e) {
  pb::Progress p;
  p.set_step(e.step);
  p.set_total_steps(e.total_steps);
  if (e.tokens_per_second > 0 && std::isfinite(e.tokens_per_second)) p.set_tokens_per_second(e.tokens_per_second);
  const bool have_loss = [&] {
    for (const auto& [k, v] : e.metrics)
      if (k == "loss") return true;
    return false;
  }();
  int terms = 0;
  double only_term = 0;
  for (const auto& [k, v] : e.metrics) {
    if (!std::isfinite(v)) continue;
    if (k == "loss") {
      p.set_loss(v);
    } else if (k == "tokens") {
      p.set_processed_tokens(static_cast<int64_t>(v));
    } else if (k != "lr" && k != "layer") {
      (*p.mutable_loss_terms())[k] = v;
      ++terms;
      only_term = v;
    }
  }
  if (!have_loss && terms == 1) p.set_loss(only_term);
  if (e.step > 0 && e.total_steps > e.step && e.elapsed_seconds > 0) {
    const double remaining =
        e.elapsed_seconds / static_cast<double>(e.step) * static_cast<double>(e.total_steps - e.step);
    if (std::isfinite(remaining)) {
      const double whole = std::floor(remaining);
      p.mutable_estimated_remaining()->set_seconds(static_cast<int64_t>(whole));
      p.mutable_estimated_remaining()->set_nanos(static_cast<int32_t>((remaining - whole) * 1e9));
    }
  }
  return p;
}

ProgressTracker::ProgressTracker(Options options, const std::atomic<bool>* stop)
    : options_(std::move(options)), stop_(stop) {}

bool ProgressTracker::CancelRequested() { return cancel_.load() || (stop_ != nullptr && stop_->load()); }

void ProgressTracker::RequestCancel() { cancel_.store(true); }

void ProgressTracker::SetNudge(std::function<void()> nudge) {
  std::lock_guard<std::mutex> lock(mu_);
  nudge_ = std::move(nudge);
}

void ProgressTracker::QueueLocked(pb::JobEvent event) {
  SetNow(event.mutable_time());
  event.set_attempt(options_.attempt);
  events_.push_back(std::move(event));
  while (events_.size() > options_.max_queued_events) {
    auto it = events_.begin();
    while (it != events_.end() && it->has_layout_selected()) ++it;
    if (it == events_.end()) break;
    events_.erase(it);
  }
}

void ProgressTracker::OnProgress(const fm::ProgressEvent& e) {
  bool urgent = false;
  std::function<void()> nudge;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const pb::ConversionJob::Stage stage = StageToProto(e.stage);
    if (stage > stage_) {
      // Every stage before the new one is done: its checkpoint is in the work dir.
      pb::StageCheckpoint c;
      c.set_stage(static_cast<pb::ConversionJob::Stage>(stage - 1));
      c.set_uri(options_.checkpoint_uri);
      c.set_worker_id(options_.worker_id);
      c.set_attempt(options_.attempt);
      checkpoint_ = std::move(c);
      stage_ = stage;
      progress_.Clear();
      urgent = true;
    }
    const bool only_message = !e.message.empty() && e.metrics.empty() && e.step == 0 && e.total_steps == 0;
    if (!only_message && stage == stage_) progress_ = ProgressFromEvent(e);
    if (!e.gates.empty()) {
      const int64_t n = static_cast<int64_t>(e.gates.size());
      const int64_t h = options_.head_level ? options_.heads_per_layer : 0;
      if (!options_.head_level || (h > 0 && n % h == 0)) {
        pb::JobEvent ev;
        *ev.mutable_gates() = GateVectorToProto(e.step, e.gates, h);
        QueueLocked(std::move(ev));
        urgent = true;
      }
    }
    if (!e.message.empty() || (e.stage == fm::Stage::kEvaluation && !e.metrics.empty())) {
      pb::JobEvent ev;
      pb::LogLine* log = ev.mutable_log();
      log->set_severity(pb::LogLine::SEVERITY_INFO);
      log->set_message(LogText(e.message.empty() ? MetricsText(e) : e.message));
      log->set_source(StrCat("engine/", fm::StageName(e.stage)));
      QueueLocked(std::move(ev));
    }
    if (urgent) nudge = nudge_;
  }
  if (nudge) nudge();
}

void ProgressTracker::AddEvent(pb::JobEvent event) {
  std::function<void()> nudge;
  {
    std::lock_guard<std::mutex> lock(mu_);
    QueueLocked(std::move(event));
    nudge = nudge_;
  }
  if (nudge) nudge();
}

void ProgressTracker::FillHeartbeat(pb::HeartbeatRequest* request, int max_events) {
  std::lock_guard<std::mutex> lock(mu_);
  request->set_stage(stage_);
  *request->mutable_progress() = progress_;
  for (int i = 0; i < max_events && !events_.empty(); ++i) {
    *request->add_events() = std::move(events_.front());
    events_.pop_front();
  }
  if (checkpoint_) {
    *request->mutable_checkpoint_written() = std::move(*checkpoint_);
    checkpoint_.reset();
  }
}

bool ProgressTracker::HasQueuedEvents() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !events_.empty();
}

pb::ConversionJob::Stage ProgressTracker::stage() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stage_;
}

}  // namespace fm::worker
