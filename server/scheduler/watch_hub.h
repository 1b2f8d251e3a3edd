// Fan-out of "job X has new events" to whoever waits on it (WatchConversionJob streams, WaitOperation calls).
// Subscribers get a callback with no payload and re-read the store; a notification never carries data, so a
// missed or merged notification loses nothing as long as subscribers read after subscribing. Thread-safe;
// callbacks run on the notifying thread without any hub lock held.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace fm::server {

class WatchHub {
 public:
  using Callback = std::function<void()>;

  // Registers `callback` for `job_id`; returns a handle for Unsubscribe.
  uint64_t Subscribe(std::string_view job_id, Callback callback);
  // After Unsubscribe returns, the callback is not running and will not run again.
  void Unsubscribe(uint64_t handle);
  // Calls every callback subscribed to job_id.
  void Notify(std::string_view job_id);
  // Calls every callback (server shutdown).
  void NotifyAll();
  size_t subscriber_count() const;

 private:
  struct Entry {
    std::string job_id;
    std::shared_ptr<Callback> callback;
  };
  mutable std::mutex mu_;
  uint64_t next_handle_ = 1;
  std::map<uint64_t, Entry> entries_;
  std::unordered_multimap<std::string, uint64_t> by_job_;
  // Serialises callbacks with Unsubscribe so a callback never runs after Unsubscribe returned.
  std::recursive_mutex callback_mu_;
};

}  // namespace fm::server
