#include "server/api/timer_notifier.h"

#include <vector>

#include "server/scheduler/watch_hub.h"

namespace fm::server {

TimerNotifier::TimerNotifier(WatchHub* hub) : hub_(hub), thread_([this] { Run(); }) {}

TimerNotifier::~TimerNotifier() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void TimerNotifier::NotifyAt(absl::Time when, std::string job_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    due_.emplace(when, std::move(job_id));
  }
  cv_.notify_all();
}

void TimerNotifier::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (due_.empty()) {
      cv_.wait(lock);
      continue;
    }
    const absl::Time next = due_.begin()->first;
    const absl::Time now = absl::Now();
    if (next > now) {
      cv_.wait_for(lock, absl::ToChronoMilliseconds(next - now) + std::chrono::milliseconds(1));
      continue;
    }
    std::vector<std::string> fire;
    while (!due_.empty() && due_.begin()->first <= now) {
      fire.push_back(std::move(due_.begin()->second));
      due_.erase(due_.begin());
    }
    lock.unlock();
    for (const auto& id : fire) hub_->Notify(id);
    lock.lock();
  }
}

}  // namespace fm::server
