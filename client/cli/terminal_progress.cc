#include "client/cli/terminal_progress.h"

#include <atomic>
#include <csignal>

#include "worker/engine/common/str_cat.h"

namespace fm {
namespace {

std::atomic<bool> g_interrupted{false};

void OnSigint(int) { g_interrupted.store(true); }

}  // namespace

TerminalProgress::TerminalProgress(std::ostream& out, bool tty, bool quiet) : quiet_(quiet), line_(out, tty) {}

void TerminalProgress::InstallInterruptHandler() { std::signal(SIGINT, OnSigint); }

bool TerminalProgress::CancelRequested() { return g_interrupted.load(); }

void TerminalProgress::Finish() { line_.Finish(); }

void TerminalProgress::OnProgress(const ProgressEvent& e) {
  if (quiet_) return;
  const std::string stage(StageName(e.stage));
  if (e.phase == "message" || !e.message.empty()) {
    line_.Print(StrCat("[", stage, "] ", e.message));
    return;
  }
  client::ProgressLine p;
  p.label = StrCat(stage, "/", e.phase);
  p.step = e.step;
  p.total_steps = e.total_steps;
  p.elapsed_seconds = e.elapsed_seconds;
  const double frac = e.total_steps > 0 ? static_cast<double>(e.step) / static_cast<double>(e.total_steps) : 0.0;
  if (frac > 0) p.eta_seconds = e.elapsed_seconds * (1 - frac) / frac;
  p.tokens_per_second = e.tokens_per_second;
  for (const auto& m : e.metrics) {
    if (m.first != "lr") p.metrics.push_back(m);
  }
  p.gates = e.gates;
  const bool last = e.total_steps > 0 && e.step >= e.total_steps;
  line_.Update(p.label, client::FormatProgressLine(p), last);
}

}  // namespace fm
