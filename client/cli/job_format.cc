#include "client/cli/job_format.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <set>

#include <google/protobuf/util/json_util.h>

#include "client/cli/connection.h"
#include "client/cli/progress_format.h"
#include "worker/engine/common/str_cat.h"

namespace fm::client {
namespace {

using flashmorph::v1::ConversionJob;
using flashmorph::v1::ConversionSpec;
using flashmorph::v1::Layout;

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string Pad(const std::string& s, size_t width) {
  return s.size() >= width ? s : s + std::string(width - s.size(), ' ');
}

std::string JoinInts(const google::protobuf::RepeatedField<int32_t>& v) {
  std::string s;
  for (int32_t i : v) s += StrCat(s.empty() ? "" : " ", i);
  return s.empty() ? "-" : s;
}

double Seconds(const google::protobuf::Duration& d) {
  return static_cast<double>(d.seconds()) + static_cast<double>(d.nanos()) * 1e-9;
}

}  // namespace

std::string StateName(ConversionJob::State state) {
  const std::string& n = ConversionJob::State_Name(state);
  return n.empty() ? StrCat("STATE_", static_cast<int>(state)) : n;
}

std::string StageName(ConversionJob::Stage stage) {
  if (stage == ConversionJob::STAGE_UNSPECIFIED) return "-";
  const std::string& n = ConversionJob::Stage_Name(stage);
  return n.empty() ? StrCat("STAGE_", static_cast<int>(stage)) : n;
}

bool IsTerminal(ConversionJob::State state) {
  return state == ConversionJob::SUCCEEDED || state == ConversionJob::FAILED || state == ConversionJob::CANCELLED;
}

std::string BudgetText(const flashmorph::v1::AttentionBudget& b) {
  switch (b.budget_case()) {
    case flashmorph::v1::AttentionBudget::kFullAttentionLayers:
      return StrCat(b.full_attention_layers(), " layers");
    case flashmorph::v1::AttentionBudget::kFullAttentionRatio:
      return StrCat("ratio ", FormatNumber(b.full_attention_ratio()));
    case flashmorph::v1::AttentionBudget::kFullAttentionHeads:
      return StrCat(b.full_attention_heads(), " heads");
    default:
      return "unset";
  }
}

std::string TimeText(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  const std::time_t secs = static_cast<std::time_t>(t.seconds());
  std::tm tm{};
  if (gmtime_r(&secs, &tm) == nullptr) return StrCat(t.seconds(), "s");
  char buf[48];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

std::string ProgressText(const flashmorph::v1::Progress& p) {
  std::string s = StrCat(p.step(), "/", p.total_steps());
  if (p.total_steps() > 0) {
    s += StrCat(" (", Fixed(100.0 * static_cast<double>(p.step()) / static_cast<double>(p.total_steps()), 0), "%)");
  }
  if (p.loss() != 0) s += StrCat(", loss ", FormatNumber(p.loss()));
  if (p.tokens_per_second() > 0) s += StrCat(", ", FormatNumber(p.tokens_per_second()), " tok/s");
  if (p.has_estimated_remaining()) s += StrCat(", ETA ", FormatDuration(Seconds(p.estimated_remaining())));
  return s;
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return StrCat("{\"error\":\"cannot print ", message.GetTypeName(), " as JSON\"}");
  }
  return json;
}

void PrintJob(const ConversionJob& job, std::ostream& out) {
  auto row = [&](const char* key, const std::string& value) { out << Pad(StrCat(key, ":"), 11) << value << "\n"; };
  row("name", job.name());
  if (!job.tenant().empty()) row("tenant", job.tenant());
  std::string state = StateName(job.state());
  if (job.attempt() > 0)
    state += StrCat(" (attempt ", job.attempt(), job.worker().empty() ? "" : ", worker ", job.worker(), ")");
  row("state", state);
  if (job.stage() != ConversionJob::STAGE_UNSPECIFIED) {
    std::string stage = StageName(job.stage());
    if (job.has_progress() && job.state() == ConversionJob::RUNNING) stage += StrCat(" ", ProgressText(job.progress()));
    row("stage", stage);
  }
  const ConversionSpec& spec = job.spec();
  row("model", spec.model().uri().empty() ? "-" : spec.model().uri());
  std::string budgets;
  for (const auto& b : spec.budgets()) budgets += StrCat(budgets.empty() ? "" : ", ", BudgetText(b));
  row("budgets", budgets.empty() ? "-" : budgets);
  std::string method = StrCat(ConversionSpec::SelectionMethod_Name(spec.selection_method()), ", branch ",
                              ConversionSpec::BranchKind_Name(spec.branch_kind()));
  if (spec.has_seed()) method += StrCat(", seed ", spec.seed());
  if (spec.priority() != 0) method += StrCat(", priority ", spec.priority());
  row("method", method);
  if (!spec.labels().empty()) {
    std::vector<std::pair<std::string, std::string>> labels(spec.labels().begin(), spec.labels().end());
    std::sort(labels.begin(), labels.end());
    std::string s;
    for (const auto& [k, v] : labels) s += StrCat(s.empty() ? "" : ", ", k, "=", v);
    row("labels", s);
  }
  row("created", TimeText(job.create_time()));
  if (job.has_start_time()) row("started", TimeText(job.start_time()));
  if (job.has_end_time()) row("ended", TimeText(job.end_time()));
  if (job.has_error()) {
    row("error",
        StrCat(StatusCodeName(static_cast<grpc::StatusCode>(job.error().code())), ": ", job.error().message()));
  }
  if (job.has_result()) {
    const auto& r = job.result();
    for (int i = 0; i < r.layouts_size(); ++i) {
      const Layout& l = r.layouts(i);
      row(i == 0 ? "layouts" : "", StrCat(BudgetText(l.budget()), ": full attention ",
                                          JoinInts(l.full_attention_layer_indices()), "  ", LayerTypeRow(l)));
    }
    if (r.has_evaluation()) {
      const auto& e = r.evaluation();
      std::string s;
      if (e.held_out_tokens() > 0) {
        s = StrCat("perplexity ", FormatNumber(e.teacher_perplexity()), " -> ", FormatNumber(e.hybrid_perplexity()),
                   ", KL ", FormatNumber(e.kl_divergence()), " nats/token");
      }
      for (const auto& n : e.needle_recall()) {
        s += StrCat(s.empty() ? "" : "; ", "recall@", n.context_tokens(), " ", Fixed(n.teacher_recall(), 3), " -> ",
                    Fixed(n.hybrid_recall(), 3));
      }
      if (!s.empty()) row("evaluation", s);
    }
    if (r.artifact_size_bytes() > 0 || !r.artifact_manifest_sha256().empty()) {
      row("artifact", StrCat(r.artifact_size_bytes(), " bytes, manifest sha256 ", r.artifact_manifest_sha256()));
    }
    if (!r.source_sha256().empty()) row("source", StrCat("sha256 ", r.source_sha256()));
  }
}

void PrintJobTable(const std::vector<ConversionJob>& jobs, std::ostream& out) {
  size_t name_width = 4;
  for (const auto& j : jobs) name_width = std::max(name_width, j.name().size());
  out << Pad("NAME", name_width) << "  " << Pad("STATE", 11) << "  " << Pad("STAGE", 10) << "  " << Pad("PROGRESS", 13)
      << "  " << Pad("CREATED", 20) << "  MODEL\n";
  for (const auto& j : jobs) {
    std::string progress = "-";
    if (j.has_progress() && j.progress().total_steps() > 0) {
      progress = StrCat(j.progress().step(), "/", j.progress().total_steps());
    }
    out << Pad(j.name(), name_width) << "  " << Pad(StateName(j.state()), 11) << "  " << Pad(StageName(j.stage()), 10)
        << "  " << Pad(progress, 13) << "  " << Pad(TimeText(j.create_time()), 20) << "  " << j.spec().model().uri()
        << "\n";
  }
}

std::string LayerTypeRow(const Layout& layout) {
  std::string s;
  for (int i = 0; i < layout.layer_types_size(); ++i) {
    if (i > 0 && i % 4 == 0) s += ' ';
    switch (layout.layer_types(i)) {
      case Layout::FULL_ATTENTION:
        s += 'F';
        break;
      case Layout::LINEAR_ATTENTION:
        s += 'L';
        break;
      case Layout::MIXED:
        s += 'M';
        break;
      default:
        s += '?';
        break;
    }
  }
  return s;
}

void PrintLayout(const Layout& l, int index, int count, std::ostream& out) {
  const bool head = l.has_head_layout() && l.head_layout().heads_per_layer() > 0;
  out << "Layout " << index + 1 << "/" << count << ": budget " << BudgetText(l.budget()) << ", method "
      << ConversionSpec::SelectionMethod_Name(l.method()) << (index == 0 ? " (exported)" : "") << "\n";
  if (head) {
    out << "  full-attention heads: " << l.head_layout().full_attention_heads() << " of "
        << l.head_layout().heads_per_layer() * l.layer_types_size() << " (" << l.head_layout().heads_per_layer()
        << " per layer)\n";
  }
  out << "  full-attention layers (" << l.full_attention_layer_indices_size() << " of " << l.layer_types_size()
      << "): " << JoinInts(l.full_attention_layer_indices()) << "\n";
  out << "  layer types: " << LayerTypeRow(l) << "   (F full, L linear, M mixed)\n";
  const std::set<int32_t> ties(l.near_tie_indices().begin(), l.near_tie_indices().end());
  out << "  layer  type     " << (l.scores_size() > 0 ? "score" : "") << (head ? "heads kept / head gates" : "")
      << "\n";
  for (int i = 0; i < l.layer_types_size(); ++i) {
    std::string type;
    switch (l.layer_types(i)) {
      case Layout::FULL_ATTENTION:
        type = "FULL";
        break;
      case Layout::LINEAR_ATTENTION:
        type = "linear";
        break;
      case Layout::MIXED:
        type = "mixed";
        break;
      default:
        type = "?";
        break;
    }
    char index_text[16];
    std::snprintf(index_text, sizeof index_text, "%5d", i);
    std::string line = StrCat("  ", index_text, "  ", Pad(type, 7), "  ");
    if (i < l.scores_size()) line += StrCat(Pad(Fixed(l.scores(i), 4), 9), !head && ties.count(i) ? "~" : "");
    if (head && i < l.head_layout().layers_size()) {
      const auto& lh = l.head_layout().layers(i);
      std::string kept;
      for (int32_t h : lh.full_attention_head_indices()) kept += StrCat(kept.empty() ? "" : ",", h);
      line += StrCat(Pad(kept.empty() ? "-" : kept, 12), " ");
      for (int h = 0; h < lh.head_gates_size(); ++h) {
        const int32_t flat = i * l.head_layout().heads_per_layer() + h;
        line += StrCat(Fixed(lh.head_gates(h), 3), ties.count(flat) ? "~" : "", " ");
      }
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
  }
  if (l.method() != ConversionSpec::UNIFORM || l.cut_margin() != 0) {
    out << "  cut margin: " << FormatNumber(l.cut_margin());
    if (l.near_tie_indices_size() > 0) {
      out << "; near ties (~, within " << FormatNumber(l.near_tie_tolerance())
          << "): " << JoinInts(l.near_tie_indices());
    } else {
      out << "; no near ties";
    }
    out << "\n";
  }
}

void PrintGateTable(const flashmorph::v1::GateVector& g, std::ostream& out) {
  out << "Gates at step " << g.step() << ":\n";
  if (g.heads_per_layer() > 0 && g.head_gates_size() > 0) {
    const int h = g.heads_per_layer();
    for (int l = 0; l * h < g.head_gates_size(); ++l) {
      std::vector<double> row;
      for (int i = l * h; i < std::min((l + 1) * h, g.head_gates_size()); ++i) row.push_back(g.head_gates(i));
      std::string line = StrCat("  layer ", Pad(std::to_string(l), 4), " ", GateSparkline(row), " ");
      for (double v : row) line += StrCat(" ", Fixed(v, 3));
      out << line << "\n";
    }
    return;
  }
  for (int l = 0; l < g.layer_gates_size(); ++l) {
    const double v = g.layer_gates(l);
    out << "  layer " << Pad(std::to_string(l), 4) << " " << Fixed(v, 4) << " [" << ProgressBar(v, 20) << "]\n";
  }
}

}  // namespace fm::client
