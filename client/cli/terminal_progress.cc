#include "client/cli/terminal_progress.h"

#include <unistd.h>

#include <csignal>
#include <algorithm>
#include <cmath>

#include "worker/engine/common/str_cat.h"

namespace fm {
namespace {

std::atomic<bool> g_interrupted{false};

void OnSigint(int) { g_interrupted.store(true); }

std::string Duration(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  char buf[32];
  if (t >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(t / 3600),
                  static_cast<long long>(t / 60 % 60), static_cast<long long>(t % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  }
  return buf;
}

std::string Number(double v) {
  char buf[32];
  if (v != 0 && (std::fabs(v) < 1e-3 || std::fabs(v) >= 1e5)) {
    std::snprintf(buf, sizeof buf, "%.3e", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.4g", v);
  }
  return buf;
}

}  // namespace

TerminalProgress::TerminalProgress(std::FILE* out, bool quiet)
    : out_(out), quiet_(quiet), tty_(isatty(fileno(out)) != 0) {}

void TerminalProgress::InstallInterruptHandler() { std::signal(SIGINT, OnSigint); }

bool TerminalProgress::CancelRequested() { return g_interrupted.load(); }

void TerminalProgress::Finish() {
  if (line_open_) std::fputc('\n', out_);
  line_open_ = false;
  std::fflush(out_);
}

void TerminalProgress::OnProgress(const ProgressEvent& e) {
  if (quiet_) return;
  const std::string stage(StageName(e.stage));
  if (e.phase == "message" || !e.message.empty()) {
    Finish();
    std::fprintf(out_, "[%s] %s\n", stage.c_str(), e.message.c_str());
    std::fflush(out_);
    return;
  }
  const std::string phase = stage + "/" + e.phase;
  const auto now = std::chrono::steady_clock::now();
  const bool last = e.total_steps > 0 && e.step >= e.total_steps;
  if (phase != last_phase_) {
    Finish();
    last_phase_ = phase;
  } else if (!tty_ && !last && now - last_print_ < std::chrono::seconds(5)) {
    return;
  }
  last_print_ = now;
  const double frac = e.total_steps > 0 ? static_cast<double>(e.step) / static_cast<double>(e.total_steps) : 0;
  constexpr int kWidth = 24;
  std::string bar(kWidth, ' ');
  for (int i = 0; i < static_cast<int>(frac * kWidth + 1e-9) && i < kWidth; ++i) bar[i] = '#';
  const double eta = frac > 0 ? e.elapsed_seconds * (1 - frac) / frac : NAN;
  std::string line = StrCat(phase, " [", bar, "] ", e.step, "/", e.total_steps, " ", Duration(e.elapsed_seconds),
                            "<", Duration(eta));
  if (e.tokens_per_second > 0) line += StrCat(" ", Number(e.tokens_per_second), " tok/s");
  for (const auto& [k, v] : e.metrics) {
    if (k == "lr") continue;
    line += StrCat(" ", k, "=", Number(v));
  }
  if (!e.gates.empty() && e.gates.size() <= 64) {
    // A sparkline of the gate vector: one block per unit, height = value.
    static const char* kBlocks[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
    line += " ";
    for (double g : e.gates) {
      const int level = static_cast<int>(std::lround(std::clamp(g, 0.0, 1.0) * 7));
      line += kBlocks[level];
    }
  }
  if (tty_) {
    std::fprintf(out_, "\r\033[K%s", line.c_str());
    line_open_ = true;
    if (last) Finish();
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

}  // namespace fm
