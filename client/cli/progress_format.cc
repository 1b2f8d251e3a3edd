#include "client/cli/progress_format.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "worker/engine/common/str_cat.h"

namespace fm::client {

std::string FormatDuration(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  char buf[48];
  if (t >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(t / 3600),
                  static_cast<long long>(t / 60 % 60), static_cast<long long>(t % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  }
  return buf;
}

std::string FormatNumber(double v) {
  char buf[32];
  if (v != 0 && (std::fabs(v) < 1e-3 || std::fabs(v) >= 1e5)) {
    std::snprintf(buf, sizeof buf, "%.3e", v);
  } else if (std::fabs(v) >= 1e3) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.4g", v);
  }
  return buf;
}

std::string ProgressBar(double fraction, int width) {
  if (!std::isfinite(fraction)) fraction = 0;
  fraction = std::clamp(fraction, 0.0, 1.0);
  std::string bar(static_cast<size_t>(std::max(width, 0)), ' ');
  const int done = std::min(width, static_cast<int>(fraction * width + 1e-9));
  for (int i = 0; i < done; ++i) bar[static_cast<size_t>(i)] = '#';
  return bar;
}

std::string GateSparkline(const std::vector<double>& gates, size_t max_values) {
  if (gates.size() > max_values) return "";
  static const char* kBlocks[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  std::string s;
  for (double g : gates) {
    if (!std::isfinite(g)) g = 0;
    s += kBlocks[std::lround(std::clamp(g, 0.0, 1.0) * 7)];
  }
  return s;
}

ProgressLine::ProgressLine() : elapsed_seconds(NAN), eta_seconds(NAN) {}

std::string FormatProgressLine(const ProgressLine& p) {
  const double frac = p.total_steps > 0 ? static_cast<double>(p.step) / static_cast<double>(p.total_steps) : 0.0;
  std::string line = StrCat(p.label, " [", ProgressBar(frac, 24), "] ", p.step, "/", p.total_steps, " ");
  if (!std::isnan(p.elapsed_seconds)) line += StrCat(FormatDuration(p.elapsed_seconds), "<");
  line += FormatDuration(p.eta_seconds);
  if (p.tokens_per_second > 0) line += StrCat(" ", FormatNumber(p.tokens_per_second), " tok/s");
  for (const auto& [k, v] : p.metrics) line += StrCat(" ", k, "=", FormatNumber(v));
  const std::string spark = GateSparkline(p.gates);
  if (!spark.empty()) line += StrCat(" ", spark);
  return line;
}

LiveLine::LiveLine(std::ostream& out, bool tty, std::chrono::milliseconds min_interval)
    : out_(out), tty_(tty), min_interval_(min_interval) {}

void LiveLine::Finish() {
  if (open_) out_ << '\n';
  open_ = false;
  out_.flush();
}

void LiveLine::Print(const std::string& text) {
  Finish();
  out_ << text << '\n';
  out_.flush();
}

void LiveLine::Update(std::string_view key, const std::string& text, bool final) {
  const auto now = std::chrono::steady_clock::now();
  if (key != key_) {
    Finish();
    key_ = std::string(key);
  } else if (!tty_ && !final && now - last_print_ < min_interval_) {
    return;
  }
  last_print_ = now;
  if (tty_) {
    out_ << "\r\033[K" << text;
    open_ = true;
    if (final) Finish();
  } else {
    out_ << text << '\n';
  }
  out_.flush();
}

}  // namespace fm::client
