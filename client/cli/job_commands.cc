// `flashmorph get | list | cancel | layout`, and the error printing every command shares.
#include <cctype>

#include "client/cli/commands.h"
#include "client/cli/job_format.h"
#include "flashmorph/v1/conversion_service.grpc.pb.h"
#include "worker/engine/common/str_cat.h"

namespace fm::client {
namespace {

using flashmorph::v1::ConversionJob;

absl::StatusOr<ConversionJob> GetJob(const std::string& job, Connection& conn, grpc::Status* rpc) {
  flashmorph::v1::GetConversionJobRequest req;
  req.set_name(JobName(job));
  ConversionJob out;
  *rpc = conn.CallWithRetry([&](grpc::ClientContext& ctx) { return conn.stub().GetConversionJob(&ctx, req, &out); });
  if (!rpc->ok()) return absl::UnknownError("rpc");
  return out;
}

}  // namespace

int PrintError(const CliIo& io, const absl::Status& status) {
  io.err << "error: " << FormatStatus(status) << "\n";
  io.err.flush();
  return kExitError;
}

int PrintError(const CliIo& io, const grpc::Status& status) {
  io.err << "error: " << FormatStatus(status) << "\n";
  io.err.flush();
  return kExitError;
}

int RunGet(const std::string& job, bool json, Connection& conn, const CliIo& io) {
  grpc::Status rpc;
  auto j = GetJob(job, conn, &rpc);
  if (!j.ok()) return PrintError(io, rpc);
  if (json) {
    io.out << ToJson(*j) << "\n";
  } else {
    PrintJob(*j, io.out);
  }
  return kExitOk;
}

int RunList(const ListFlags& flags, Connection& conn, const CliIo& io) {
  if (flags.page_size < 0) return PrintError(io, absl::InvalidArgumentError("--page-size must not be negative"));
  flashmorph::v1::ListConversionJobsRequest req;
  req.set_tenant(flags.tenant);
  req.set_page_size(flags.page_size);
  req.set_page_token(flags.page_token);
  for (const std::string& s : flags.states) {
    std::string key = s;
    for (char& c : key) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    ConversionJob::State state;
    if (!ConversionJob::State_Parse(key, &state) || state == ConversionJob::STATE_UNSPECIFIED) {
      return PrintError(io, absl::InvalidArgumentError(StrCat(
                                "--state ", s, ": expected pending|running|succeeded|failed|cancelling|cancelled")));
    }
    req.add_states(state);
  }
  flashmorph::v1::ListConversionJobsResponse all;
  for (;;) {
    flashmorph::v1::ListConversionJobsResponse page;
    const grpc::Status s =
        conn.CallWithRetry([&](grpc::ClientContext& ctx) { return conn.stub().ListConversionJobs(&ctx, req, &page); });
    if (!s.ok()) return PrintError(io, s);
    for (auto& j : *page.mutable_jobs()) *all.add_jobs() = std::move(j);
    all.set_next_page_token(page.next_page_token());
    if (!flags.all || page.next_page_token().empty()) break;
    req.set_page_token(page.next_page_token());
  }
  if (flags.json) {
    io.out << ToJson(all) << "\n";
    return kExitOk;
  }
  PrintJobTable({all.jobs().begin(), all.jobs().end()}, io.out);
  if (!all.next_page_token().empty()) {
    io.out << "(more: --page-token " << all.next_page_token() << ", or --all)\n";
  }
  return kExitOk;
}

int RunCancel(const std::string& job, bool json, Connection& conn, const CliIo& io) {
  flashmorph::v1::CancelConversionJobRequest req;
  req.set_name(JobName(job));
  ConversionJob out;
  // Not retried: a retry of a cancel that took effect would answer FAILED_PRECONDITION.
  auto ctx = conn.NewContext(/*unary=*/true);
  const grpc::Status s = conn.stub().CancelConversionJob(ctx.get(), req, &out);
  if (!s.ok()) return PrintError(io, s);
  if (json) {
    io.out << ToJson(out) << "\n";
  } else {
    io.out << out.name() << " " << StateName(out.state()) << "\n";
  }
  return kExitOk;
}

int RunLayout(const std::string& job, bool json, Connection& conn, const CliIo& io) {
  grpc::Status rpc;
  auto j = GetJob(job, conn, &rpc);
  if (!j.ok()) return PrintError(io, rpc);
  if (!j->has_result() || j->result().layouts_size() == 0) {
    return PrintError(io, absl::FailedPreconditionError(
                              StrCat(j->name(), " is ", StateName(j->state()),
                                     ": layouts come with the result of a SUCCEEDED job (`flashmorph watch` prints "
                                     "them as they are selected)")));
  }
  const auto& layouts = j->result().layouts();
  if (json) {
    io.out << "[";
    for (int i = 0; i < layouts.size(); ++i) io.out << (i ? "," : "") << ToJson(layouts.Get(i));
    io.out << "]\n";
    return kExitOk;
  }
  for (int i = 0; i < layouts.size(); ++i) {
    if (i > 0) io.out << "\n";
    PrintLayout(layouts.Get(i), i, layouts.size(), io.out);
  }
  return kExitOk;
}

}  // namespace fm::client
