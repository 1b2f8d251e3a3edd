// `flashmorph watch`: follows a job's event stream to its end, resuming broken streams with after_sequence.
#include <algorithm>
#include <cmath>
#include <optional>
#include <thread>

#include "client/cli/commands.h"
#include "client/cli/job_format.h"
#include "client/cli/progress_format.h"
#include "flashmorph/v1/conversion_service.grpc.pb.h"
#include "worker/engine/common/str_cat.h"

namespace fm::client {
namespace {

using flashmorph::v1::ConversionJob;
using flashmorph::v1::JobEvent;

double Seconds(const google::protobuf::Duration& d) {
  return static_cast<double>(d.seconds()) + static_cast<double>(d.nanos()) * 1e-9;
}

// Renders events for people: a live progress line per stage, one line per other event, and at the end the final
// gates and the layouts.
class HumanPrinter {
 public:
  explicit HumanPrinter(const CliIo& io) : io_(io), line_(io.out, io.tty) {}

  void OnEvent(const JobEvent& e) {
    switch (e.event_case()) {
      case JobEvent::kStateChange: {
        const auto& c = e.state_change();
        std::string text = c.previous() == ConversionJob::STATE_UNSPECIFIED
                               ? StrCat("state ", StateName(c.current()))
                               : StrCat("state ", StateName(c.previous()), " -> ", StateName(c.current()));
        if (e.attempt() > 0) text += StrCat(" (attempt ", e.attempt(), ")");
        if (c.has_reason() && (c.reason().code() != 0 || !c.reason().message().empty())) {
          text += StrCat(": ", StatusCodeName(static_cast<grpc::StatusCode>(c.reason().code())), ": ",
                         c.reason().message());
        }
        line_.Print(text);
        break;
      }
      case JobEvent::kStageChange:
        stage_ = e.stage_change().current();
        line_.Print(StrCat("stage ", StageName(stage_),
                           e.stage_change().resumed_from_checkpoint() ? " (resumed from checkpoint)" : ""));
        break;
      case JobEvent::kProgress: {
        const auto& p = e.progress();
        ProgressLine l;
        l.label = StageName(stage_);
        l.step = p.step();
        l.total_steps = p.total_steps();
        if (p.has_estimated_remaining()) l.eta_seconds = Seconds(p.estimated_remaining());
        l.tokens_per_second = p.tokens_per_second();
        if (p.loss() != 0) l.metrics.emplace_back("loss", p.loss());
        std::vector<std::pair<std::string, double>> terms(p.loss_terms().begin(), p.loss_terms().end());
        std::sort(terms.begin(), terms.end());
        l.metrics.insert(l.metrics.end(), terms.begin(), terms.end());
        if (stage_ == ConversionJob::GATES && gates_) l.gates = GateValues(*gates_);
        line_.Update(l.label, FormatProgressLine(l), p.total_steps() > 0 && p.step() >= p.total_steps());
        break;
      }
      case JobEvent::kGates:
        gates_ = e.gates();
        break;
      case JobEvent::kLayoutSelected: {
        const auto& l = e.layout_selected();
        layouts_.push_back(l);
        line_.Print(StrCat("layout selected: budget ", BudgetText(l.budget()), ", full-attention layers ",
                           JoinIndices(l), "  ", LayerTypeRow(l)));
        break;
      }
      case JobEvent::kLog: {
        const auto& log = e.log();
        if (log.severity() == flashmorph::v1::LogLine::SEVERITY_DEBUG) break;
        std::string sev;
        if (log.severity() == flashmorph::v1::LogLine::SEVERITY_WARNING) sev = "warning: ";
        if (log.severity() == flashmorph::v1::LogLine::SEVERITY_ERROR) sev = "error: ";
        line_.Print(StrCat("[", log.source().empty() ? "log" : log.source(), "] ", sev, log.message()));
        break;
      }
      case JobEvent::kResult:
        result_ = e.result();
        break;
      default:
        break;
    }
  }

  void EndLine() { line_.Finish(); }

  void Notice(const std::string& text) {
    line_.Finish();
    io_.err << text << "\n";
    io_.err.flush();
  }

  // The summary after the last event; `job` is the job when it had to be read with GetConversionJob.
  void Finish(const std::string& name, ConversionJob::State state, const std::optional<ConversionJob>& job) {
    line_.Finish();
    if (gates_) {
      io_.out << "\n";
      PrintGateTable(*gates_, io_.out);
    }
    const google::protobuf::RepeatedPtrField<flashmorph::v1::Layout>* layouts = nullptr;
    google::protobuf::RepeatedPtrField<flashmorph::v1::Layout> selected(layouts_.begin(), layouts_.end());
    if (result_ && result_->layouts_size() > 0) {
      layouts = &result_->layouts();
    } else if (job && job->has_result() && job->result().layouts_size() > 0) {
      layouts = &job->result().layouts();
    } else if (!selected.empty()) {
      layouts = &selected;
    }
    if (layouts) {
      for (int i = 0; i < layouts->size(); ++i) {
        io_.out << "\n";
        PrintLayout(layouts->Get(i), i, layouts->size(), io_.out);
      }
    }
    io_.out << "\n" << name << " " << StateName(state);
    if (failure_) io_.out << ": " << *failure_;
    io_.out << "\n";
    io_.out.flush();
  }

  void SetFailure(std::string text) { failure_ = std::move(text); }

 private:
  static std::vector<double> GateValues(const flashmorph::v1::GateVector& g) {
    if (g.layer_gates_size() > 0) return {g.layer_gates().begin(), g.layer_gates().end()};
    return {g.head_gates().begin(), g.head_gates().end()};
  }
  static std::string JoinIndices(const flashmorph::v1::Layout& l) {
    std::string s;
    for (int32_t i : l.full_attention_layer_indices()) s += StrCat(s.empty() ? "" : " ", i);
    return s.empty() ? "-" : s;
  }

  const CliIo& io_;
  LiveLine line_;
  ConversionJob::Stage stage_ = ConversionJob::STAGE_UNSPECIFIED;
  std::optional<flashmorph::v1::GateVector> gates_;
  std::vector<flashmorph::v1::Layout> layouts_;
  std::optional<flashmorph::v1::ConversionResult> result_;
  std::optional<std::string> failure_;
};

int ExitCodeFor(ConversionJob::State state) {
  switch (state) {
    case ConversionJob::SUCCEEDED:
      return kExitOk;
    case ConversionJob::CANCELLED:
      return kExitJobCancelled;
    default:
      return kExitJobFailed;
  }
}

std::string ReasonText(const google::rpc::Status& s) {
  return StrCat(StatusCodeName(static_cast<grpc::StatusCode>(s.code())), ": ", s.message());
}

}  // namespace

int RunWatch(const WatchFlags& flags, Connection& conn, const CliIo& io) {
  if (flags.after_sequence < 0) {
    return PrintError(io, absl::InvalidArgumentError("--after-sequence must not be negative"));
  }
  const std::string name = JobName(flags.job);
  HumanPrinter human(io);
  int64_t last_sequence = flags.after_sequence;
  std::optional<ConversionJob::State> final_state;
  std::optional<ConversionJob> final_job;
  Backoff backoff(conn.retry());
  int failures = 0;
  for (;;) {
    auto ctx = conn.NewContext(/*unary=*/false);
    flashmorph::v1::WatchConversionJobRequest req;
    req.set_name(name);
    req.set_after_sequence(last_sequence);
    auto reader = conn.stub().WatchConversionJob(ctx.get(), req);
    JobEvent e;
    bool received = false;
    while (reader->Read(&e)) {
      if (e.sequence() <= last_sequence) continue;  // never print an event twice
      received = true;
      last_sequence = e.sequence();
      if (flags.json) {
        io.out << ToJson(e) << "\n";
        io.out.flush();
      } else {
        human.OnEvent(e);
      }
      if (e.has_state_change() && IsTerminal(e.state_change().current())) {
        final_state = e.state_change().current();
        if (e.state_change().has_reason() && e.state_change().reason().code() != 0) {
          human.SetFailure(ReasonText(e.state_change().reason()));
        }
      }
    }
    const grpc::Status status = reader->Finish();
    if (final_state) break;
    if (status.ok()) {
      // The stream ended without the terminal event (e.g. after_sequence was already past it): ask the job.
      ConversionJob job;
      flashmorph::v1::GetConversionJobRequest get;
      get.set_name(name);
      const grpc::Status g =
          conn.CallWithRetry([&](grpc::ClientContext& c) { return conn.stub().GetConversionJob(&c, get, &job); });
      if (!g.ok()) return PrintError(io, g);
      if (IsTerminal(job.state())) {
        final_state = job.state();
        if (job.has_error() && job.error().code() != 0) human.SetFailure(ReasonText(job.error()));
        final_job = std::move(job);
        break;
      }
    } else if (status.error_code() != grpc::StatusCode::UNAVAILABLE) {
      if (!flags.json) human.EndLine();
      return PrintError(io, status);
    }
    if (received) {
      failures = 0;
      backoff.Reset();
    }
    if (++failures >= conn.retry().max_stream_attempts) {
      return PrintError(io, grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                         StrCat("gave up watching ", name, " after ", failures,
                                                " attempts without progress: ", status.error_message())));
    }
    const auto wait = backoff.Next();
    if (!flags.json) {
      human.Notice(StrCat("watch stream ended (", status.ok() ? "OK" : FormatStatus(status), "); resuming after event ",
                          last_sequence, " in ", wait.count(), " ms"));
    }
    std::this_thread::sleep_for(wait);
  }
  if (!flags.json) human.Finish(name, *final_state, final_job);
  return ExitCodeFor(*final_state);
}

}  // namespace fm::client
