// Text building blocks of the CLI's progress output, shared by `flashmorph convert` (engine events) and
// `flashmorph watch` (JobEvents): durations, numbers, bars, gate sparklines, one formatted progress line, and a
// LiveLine that redraws one line in place on a terminal and prints a throttled line per update otherwise.
// Torch-free and gRPC-free.
#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fm::client {

// "mm:ss" or "h:mm:ss"; "--:--" for a negative or non-finite value.
std::string FormatDuration(double seconds);
// "%.4g"; "%.0f" for magnitudes in [1e3, 1e5); "%.3e" below 1e-3 or from 1e5.
std::string FormatNumber(double v);
// `width` characters, '#' for the done fraction (clamped to [0, 1]), ' ' for the rest.
std::string ProgressBar(double fraction, int width);
// One block character per value (height = value clamped to [0, 1]); empty for more than `max_values` values.
std::string GateSparkline(const std::vector<double>& gates, size_t max_values = 64);

// What one progress line shows. Unknown times are NaN.
struct ProgressLine {
  std::string label;  // e.g. "GATES" or "selection/gates"
  int64_t step = 0, total_steps = 0;
  double elapsed_seconds;  // NaN: not shown
  double eta_seconds;      // NaN: unknown
  double tokens_per_second = 0;
  std::vector<std::pair<std::string, double>> metrics;  // shown as name=value, in order
  std::vector<double> gates;                            // shown as a sparkline

  ProgressLine();
};

// "label [####    ] step/total elapsed<eta rate tok/s k=v ... ▁▃█".
std::string FormatProgressLine(const ProgressLine& line);

// One live line. On a TTY, Update() redraws it in place ("\r\033[K"); otherwise Update() prints a full line at
// most every `min_interval` per key, and always when the key changes or `final` is set. Print() ends the live
// line first and prints a line of its own.
class LiveLine {
 public:
  LiveLine(std::ostream& out, bool tty, std::chrono::milliseconds min_interval = std::chrono::seconds(5));
  void Update(std::string_view key, const std::string& text, bool final);
  void Print(const std::string& text);
  void Finish();  // ends a pending live line

 private:
  std::ostream& out_;
  bool tty_;
  std::chrono::milliseconds min_interval_;
  bool open_ = false;
  std::string key_;
  std::chrono::steady_clock::time_point last_print_;
};

}  // namespace fm::client
