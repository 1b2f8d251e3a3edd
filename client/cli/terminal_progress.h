// A ProgressSink for terminals: one live line per stage (stage, phase, step/total, bar, rate, ETA, key metrics,
// gate sparkline), redrawn in place on a TTY and printed every few seconds otherwise; stage messages on their own
// lines. Ctrl-C requests cancellation (the engine checkpoints and stops at the next step).
#pragma once

#include <ostream>

#include "client/cli/progress_format.h"
#include "worker/engine/morph/progress.h"

namespace fm {

class TerminalProgress final : public ProgressSink {
 public:
  // `tty`: `out` is a terminal (redraw in place).
  TerminalProgress(std::ostream& out, bool tty, bool quiet = false);
  void OnProgress(const ProgressEvent& event) override;
  bool CancelRequested() override;
  void Finish();  // ends a pending live line

  static void InstallInterruptHandler();

 private:
  bool quiet_;
  client::LiveLine line_;
};

}  // namespace fm
