#include "server/scheduler/watch_hub.h"

#include <vector>

namespace fm::server {

uint64_t WatchHub::Subscribe(std::string_view job_id, Callback callback) {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t handle = next_handle_++;
  entries_.emplace(handle, Entry{std::string(job_id), std::make_shared<Callback>(std::move(callback))});
  by_job_.emplace(std::string(job_id), handle);
  return handle;
}

void WatchHub::Unsubscribe(uint64_t handle) {
  std::lock_guard<std::recursive_mutex> cb_lock(callback_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end()) return;
  auto range = by_job_.equal_range(it->second.job_id);
  for (auto j = range.first; j != range.second; ++j) {
    if (j->second == handle) {
      by_job_.erase(j);
      break;
    }
  }
  entries_.erase(it);
}

void WatchHub::Notify(std::string_view job_id) {
  std::lock_guard<std::recursive_mutex> cb_lock(callback_mu_);
  std::vector<std::shared_ptr<Callback>> callbacks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto range = by_job_.equal_range(std::string(job_id));
    for (auto j = range.first; j != range.second; ++j) callbacks.push_back(entries_.at(j->second).callback);
  }
  for (auto& cb : callbacks) (*cb)();
}

void WatchHub::NotifyAll() {
  std::lock_guard<std::recursive_mutex> cb_lock(callback_mu_);
  std::vector<std::shared_ptr<Callback>> callbacks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [handle, entry] : entries_) callbacks.push_back(entry.callback);
  }
  for (auto& cb : callbacks) (*cb)();
}

size_t WatchHub::subscriber_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace fm::server
