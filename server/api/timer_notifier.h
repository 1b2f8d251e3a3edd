// Wakes WatchHub subscribers of a job at a given time (WaitOperation timeouts): one thread, earliest deadline first.
// Stops (without firing what is left) when destroyed.
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace fm::server {

class WatchHub;

class TimerNotifier {
 public:
  explicit TimerNotifier(WatchHub* hub);
  ~TimerNotifier();
  TimerNotifier(const TimerNotifier&) = delete;
  TimerNotifier& operator=(const TimerNotifier&) = delete;

  void NotifyAt(absl::Time when, std::string job_id);

 private:
  void Run();
  WatchHub* const hub_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<absl::Time, std::string> due_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace fm::server
