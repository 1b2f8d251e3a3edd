// A ProgressSink for terminals: one live line per stage (stage, phase, step/total, bar, rate, ETA, key metrics),
// redrawn in place on a TTY and printed every few seconds otherwise; stage messages on their own lines. Ctrl-C
// requests cancellation (the engine checkpoints and stops at the next step).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>

#include "worker/engine/morph/progress.h"

namespace fm {

class TerminalProgress final : public ProgressSink {
 public:
  explicit TerminalProgress(std::FILE* out, bool quiet = false);
  void OnProgress(const ProgressEvent& event) override;
  bool CancelRequested() override;
  void Finish();  // ends a pending live line

  static void InstallInterruptHandler();

 private:
  std::FILE* out_;
  bool quiet_, tty_;
  bool line_open_ = false;
  std::string last_phase_;
  std::chrono::steady_clock::time_point last_print_;
};

}  // namespace fm
