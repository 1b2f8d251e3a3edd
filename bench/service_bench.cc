// service_bench: measures a real flashmorphd process (started here, fresh --data-dir, no workers, so every job stays
// PENDING) and prints one markdown table on stdout (progress goes to stderr):
//  - CreateConversionJob and GetConversionJob: closed loop of 1 / 8 / 64 clients for a fixed duration; req/s, p50,
//    p99. Each client is a thread with the synchronous stub and its own channel and TCP connection (local subchannel
//    pool), unless --shared-channel.
//  - WatchConversionJob: N streams (one per job, on --watch-channels channels, client callback API); time until all
//    received their first event, server RSS with the streams open, then CancelConversionJob on every job from
//    --cancel-clients threads: delivery latency (Cancel call start -> CANCELLED state change received).
//  - 10,000 queued jobs on a second fresh flashmorphd: RSS before and after, SQLite file sizes, create rate.
//  - The ceiling: a unary echo server (bench/echo.proto, callback API, loopback) in a child process (this binary with
//    --serve-echo), with the same clients.
// Checks what is cheap (every RPC OK, operations not done, jobs PENDING then CANCELLED, every watch got CANCELLED and
// ended OK) and exits 1 on any failure. No timing assertions.
#include <fcntl.h>
#include <grpc/grpc.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "echo.grpc.pb.h"
#include "flashmorph/v1/conversion_service.grpc.pb.h"
#include "google/longrunning/operations.pb.h"

extern char** environ;

namespace fm::bench {
namespace {

namespace v1 = ::flashmorph::v1;
using Clock = std::chrono::steady_clock;

#ifndef FM_FLASHMORPHD_PATH
#define FM_FLASHMORPHD_PATH ""
#endif

struct Flags {
  std::string flashmorphd = FM_FLASHMORPHD_PATH;
  std::string repo_root = FM_SOURCE_DIR;
  std::string work_dir;  // empty: a fresh mkdtemp under /tmp, removed at the end
  bool keep = false;
  double seconds = 3;
  std::vector<int> clients = {1, 8, 64};
  bool shared_channel = false;
  int watchers = 1000;
  int watch_channels = 16;
  int cancel_clients = 8;
  int queued_jobs = 10000;
  int queued_clients = 8;
  int echo_bytes = 128;
};

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

void Log(const std::string& line) { std::fprintf(stderr, "service_bench: %s\n", line.c_str()); }

std::string Fmt(const char* format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}

// Nearest-rank percentile of sorted samples (nanoseconds) in milliseconds.
double PercentileMs(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return static_cast<double>(sorted[rank - 1]) / 1e6;
}

std::string ReadFirstLineWith(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return line;
  }
  return "";
}

// VmRSS of a process in KiB (0 if unreadable).
int64_t RssKiB(pid_t pid) {
  const std::string line = ReadFirstLineWith("/proc/" + std::to_string(pid) + "/status", "VmRSS:");
  if (line.empty()) return 0;
  return std::atoll(line.c_str() + 6);
}

std::string MiB(int64_t bytes) { return Fmt("%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0)); }

// User + system CPU seconds of a process from /proc/<pid>/stat; -1 if unreadable.
double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream fields(text.substr(paren + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {  // field 3 is the state; 14 utime, 15 stime
    if (i >= 14) ticks += std::atof(field.c_str());
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

int64_t FileSize(const std::string& path) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  return ec ? 0 : static_cast<int64_t>(size);
}

std::string SelfPath() {
  std::error_code ec;
  auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "" : path.string();
}

std::string MachineLine() {
  std::string cpu = ReadFirstLineWith("/proc/cpuinfo", "model name");
  if (auto colon = cpu.find(':'); colon != std::string::npos) cpu = cpu.substr(colon + 2);
  if (ReadFirstLineWith("/proc/cpuinfo", "flags").find(" hypervisor") != std::string::npos) cpu += " (virtual machine)";
  std::string l1, l5, l15;
  std::ifstream("/proc/loadavg") >> l1 >> l5 >> l15;
  const std::string load = l1 + " " + l5 + " " + l15;
  std::time_t now = std::time(nullptr);
  char date[64];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  utsname uts{};
  uname(&uts);
  return std::string("Date ") + date + "; nproc " + std::to_string(sysconf(_SC_NPROCESSORS_ONLN)) + ", " + cpu +
         "; Linux " + uts.release + "; gRPC " + grpc::Version() + "; load average at start " + load + ".";
}

// ---------------------------------------------------------------------------------------------------------------
// flashmorphd as a child process.

// A child process (flashmorphd, or this binary as the echo server) that writes {"port": N, ...} to a port file
// once serving.
class Child {
 public:
  ~Child() { Stop(); }

  bool Start(std::vector<std::string> args, const std::string& port_file, const std::string& log) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const int rc = posix_spawn(&pid_, args[0].c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      Log("cannot start " + args[0] + ": " + std::strerror(rc));
      pid_ = 0;
      return false;
    }
    for (int i = 0; i < 1500; ++i) {  // 30 s
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        Log(args[0] + " exited at start; see " + log);
        pid_ = 0;
        return false;
      }
      std::ifstream in(port_file);
      if (in) {
        auto json = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
        if (json.is_object() && json.contains("port") && json["port"].is_number_integer()) {
          port_ = json["port"].get<int>();
          return true;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Log(args[0] + " wrote no port file within 30 s; see " + log);
    return false;
  }

  // SIGTERM, then SIGKILL after 15 s.
  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 750; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = 0;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = 0;
  }

  pid_t pid() const { return pid_; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  pid_t pid_ = 0;
  int port_ = 0;
};

// flashmorphd with a fresh data dir under `dir`, no workers.
class Daemon : public Child {
 public:
  bool Start(const Flags& flags, const std::string& dir) {
    std::filesystem::create_directories(dir);
    data_dir_ = dir + "/data";
    const std::string port_file = dir + "/port.json";
    return Child::Start({flags.flashmorphd, "--listen", "127.0.0.1:0", "--data-dir", data_dir_, "--port-file",
                         port_file, "--model-root", flags.repo_root + "/models"},
                        port_file, dir + "/flashmorphd.log");
  }
  const std::string& data_dir() const { return data_dir_; }

 private:
  std::string data_dir_;
};

// A channel with its own TCP connection (a local subchannel pool keeps gRPC from sharing one between channels).
std::shared_ptr<grpc::Channel> NewChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return channel;
}

// The first RPC failure of a phase (any thread); the phase stops and the bench exits 1.
class Failure {
 public:
  void Set(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    if (message_.empty()) message_ = what;
    failed_.store(true);
  }
  bool failed() const { return failed_.load(); }
  std::string message() const {
    std::lock_guard<std::mutex> lock(mu_);
    return message_;
  }

 private:
  mutable std::mutex mu_;
  std::string message_;
  std::atomic<bool> failed_{false};
};

std::string Describe(const std::string& rpc, const grpc::Status& status) {
  return rpc + " failed: code " + std::to_string(status.error_code()) + ": " + status.error_message();
}

// ---------------------------------------------------------------------------------------------------------------
// Closed loops of synchronous clients.

struct LoopResult {
  int64_t calls = 0;
  double seconds = 0;
  std::vector<int64_t> latency_ns;              // sorted
  double server_cpu_s = -1, client_cpu_s = -1;  // CPU time over the measured window; -1: not measured
  double rate() const { return seconds > 0 ? static_cast<double>(calls) / seconds : 0; }
};

// One client's call: the i-th call of this client; returns an error text or "".
using CallFn = std::function<std::string(int64_t i)>;

// `clients` threads, each with its CallFn from make(thread), call until `seconds` have passed (seconds > 0) or
// until `total` calls were made by all together. One unmeasured warm-up call per client when warm_up.
// CPU time (user + system) of the server process `server` and of this process is measured over the same window.
LoopResult RunClosedLoop(int clients, double seconds, int64_t total, bool warm_up,
                         const std::function<CallFn(int)>& make, Failure& failure, pid_t server) {
  std::vector<CallFn> fns;
  for (int t = 0; t < clients; ++t) fns.push_back(make(t));
  if (warm_up) {
    for (int t = 0; t < clients && !failure.failed(); ++t) {
      if (std::string err = fns[t](-1); !err.empty()) failure.Set(err);
    }
  }
  std::vector<std::vector<int64_t>> latencies(clients);
  std::atomic<int64_t> next{0};
  std::atomic<bool> go{false};
  std::atomic<int64_t> start_ns{0};
  std::vector<int64_t> end_ns(clients, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      const int64_t deadline = start_ns.load() + static_cast<int64_t>(seconds * 1e9);
      auto& lat = latencies[t];
      lat.reserve(seconds > 0 ? 4096 : static_cast<size_t>(total / clients + 1));
      for (int64_t i = 0; !failure.failed(); ++i) {
        if (seconds > 0 ? NowNs() >= deadline : next.fetch_add(1) >= total) break;
        const int64_t t0 = NowNs();
        if (std::string err = fns[t](i); !err.empty()) {
          failure.Set(err);
          break;
        }
        lat.push_back(NowNs() - t0);
      }
      end_ns[t] = NowNs();
    });
  }
  const double server_cpu0 = CpuSeconds(server), client_cpu0 = SelfCpuSeconds();
  start_ns.store(NowNs());
  go.store(true);
  for (auto& th : threads) th.join();
  const double server_cpu1 = CpuSeconds(server), client_cpu1 = SelfCpuSeconds();
  LoopResult result;
  for (auto& lat : latencies) result.latency_ns.insert(result.latency_ns.end(), lat.begin(), lat.end());
  std::sort(result.latency_ns.begin(), result.latency_ns.end());
  result.calls = static_cast<int64_t>(result.latency_ns.size());
  result.seconds = static_cast<double>(*std::max_element(end_ns.begin(), end_ns.end()) - start_ns.load()) / 1e9;
  if (server_cpu0 >= 0 && server_cpu1 >= 0) result.server_cpu_s = server_cpu1 - server_cpu0;
  result.client_cpu_s = client_cpu1 - client_cpu0;
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// The table.

class Table {
 public:
  void Row(const std::string& what, const std::string& clients, const LoopResult& r, const std::string& notes) {
    auto per_call = [&](double cpu_s) {
      return cpu_s < 0 || r.calls == 0 ? std::string("-") : Fmt("%.0f", cpu_s * 1e6 / static_cast<double>(r.calls));
    };
    Add(what, clients, std::to_string(r.calls), Fmt("%.0f", r.rate()), Fmt("%.3f", PercentileMs(r.latency_ns, 0.5)),
        Fmt("%.3f", PercentileMs(r.latency_ns, 0.99)), per_call(r.server_cpu_s), per_call(r.client_cpu_s), notes);
  }
  void Add(const std::string& what, const std::string& clients, const std::string& calls, const std::string& rate,
           const std::string& p50, const std::string& p99, const std::string& server_cpu, const std::string& client_cpu,
           const std::string& notes) {
    rows_.push_back("| " + what + " | " + clients + " | " + calls + " | " + rate + " | " + p50 + " | " + p99 + " | " +
                    server_cpu + " | " + client_cpu + " | " + notes + " |");
    Log(rows_.back());
  }
  void Print(const std::string& header, const std::vector<std::string>& footnotes) const {
    std::printf("%s\n\n", header.c_str());
    std::printf(
        "| benchmark | clients | calls | rate (/s) | p50 (ms) | p99 (ms) | server CPU/call (µs) | "
        "client CPU/call (µs) | notes |\n");
    std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (const auto& row : rows_) std::printf("%s\n", row.c_str());
    std::printf("\n");
    for (const auto& note : footnotes) std::printf("- %s\n", note.c_str());
    std::fflush(stdout);
  }

 private:
  std::vector<std::string> rows_;
};

// ---------------------------------------------------------------------------------------------------------------
// flashmorphd clients.

v1::CreateConversionJobRequest CreateRequest(const Flags& flags) {
  v1::CreateConversionJobRequest request;
  request.mutable_spec()->mutable_model()->set_uri(flags.repo_root + "/models/demo/qwen3-demo");
  request.mutable_spec()->add_budgets()->set_full_attention_ratio(0.25);
  return request;
}

// Stubs for `clients` clients: one channel each, or one shared.
std::vector<std::unique_ptr<v1::ConversionService::Stub>> Stubs(const std::string& target, int clients, bool shared) {
  std::vector<std::unique_ptr<v1::ConversionService::Stub>> stubs;
  std::shared_ptr<grpc::Channel> one = shared ? NewChannel(target) : nullptr;
  for (int t = 0; t < clients; ++t) stubs.push_back(v1::ConversionService::NewStub(shared ? one : NewChannel(target)));
  return stubs;
}

// A Create client; appends the created jobs' names to *names.
CallFn CreateClient(v1::ConversionService::Stub* stub, const Flags& flags, std::vector<std::string>* names) {
  return [stub, names, request = CreateRequest(flags)](int64_t) -> std::string {
    grpc::ClientContext ctx;
    google::longrunning::Operation op;
    grpc::Status status = stub->CreateConversionJob(&ctx, request, &op);
    if (!status.ok()) return Describe("CreateConversionJob", status);
    if (op.name().rfind("operations/", 0) != 0 || op.done()) {
      return "CreateConversionJob returned an unexpected operation: " + op.ShortDebugString();
    }
    names->push_back("jobs/" + op.name().substr(11));
    return "";
  };
}

// Creates `count` jobs with `clients` clients; the result's calls are the creates.
LoopResult CreateJobs(const std::string& target, const Flags& flags, int count, int clients,
                      std::vector<std::string>* names, Failure& failure, pid_t server) {
  auto stubs = Stubs(target, clients, flags.shared_channel);
  std::vector<std::vector<std::string>> per_client(clients);
  LoopResult r = RunClosedLoop(
      clients, 0, count, /*warm_up=*/false, [&](int t) { return CreateClient(stubs[t].get(), flags, &per_client[t]); },
      failure, server);
  for (auto& v : per_client) names->insert(names->end(), v.begin(), v.end());
  return r;
}

// One WatchConversionJob stream on the callback API: records when its first event and the CANCELLED state change
// arrived, and how it ended.
class Watcher;

class WatchGroup {
 public:
  void Established() {
    std::lock_guard<std::mutex> lock(mu_);
    ++established_;
    cv_.notify_all();
  }
  void Done() {
    std::lock_guard<std::mutex> lock(mu_);
    ++done_;
    cv_.notify_all();
  }
  // Waits until `n` streams got their first event (established) or ended (done); false on timeout.
  bool WaitEstablished(int n, std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return established_ + done_ >= n; }) && done_ == 0;
  }
  bool WaitDone(int n, std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return done_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int established_ = 0, done_ = 0;
};

class Watcher final : public grpc::ClientReadReactor<v1::JobEvent> {
 public:
  Watcher(WatchGroup* group, v1::ConversionService::Stub* stub, const std::string& job) : group_(group) {
    request_.set_name(job);
    stub->async()->WatchConversionJob(&ctx_, &request_, this);
    StartRead(&event_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    const int64_t now = NowNs();
    ++events_;
    if (event_.has_state_change() && event_.state_change().current() == v1::ConversionJob::CANCELLED) {
      cancelled_ns_ = now;
    }
    if (first_ns_ == 0) {
      first_ns_ = now;
      group_->Established();
    }
    StartRead(&event_);
  }

  void OnDone(const grpc::Status& status) override {
    status_ = status;
    group_->Done();
  }

  // Read after WatchGroup::WaitDone (its mutex orders these writes before the reads).
  int64_t first_ns() const { return first_ns_; }
  int64_t cancelled_ns() const { return cancelled_ns_; }
  int events() const { return events_; }
  const grpc::Status& status() const { return status_; }

 private:
  WatchGroup* group_;
  grpc::ClientContext ctx_;
  v1::WatchConversionJobRequest request_;
  v1::JobEvent event_;
  int64_t first_ns_ = 0, cancelled_ns_ = 0;
  int events_ = 0;
  grpc::Status status_;
};

// ---------------------------------------------------------------------------------------------------------------
// The echo server (the ceiling).

class EchoService final : public ::fm::bench::Echo::CallbackService {
  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* ctx, const EchoMessage* request,
                                 EchoMessage* response) override {
    *response = *request;
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

// ---------------------------------------------------------------------------------------------------------------

std::string ClientsNote(const Flags& flags) {
  return flags.shared_channel ? "one shared channel" : "a channel (TCP connection) per client";
}

// Create and Get on a fresh flashmorphd, then the watch fan-out. Returns false on any failure.
bool BenchFlashmorphd(const Flags& flags, const std::string& dir, Table& table) {
  Daemon daemon;
  if (!daemon.Start(flags, dir)) return false;
  Log("flashmorphd pid " + std::to_string(daemon.pid()) + " on " + daemon.target() + ", data in " + daemon.data_dir());
  Failure failure;
  std::vector<std::string> jobs;

  for (int clients : flags.clients) {
    auto stubs = Stubs(daemon.target(), clients, flags.shared_channel);
    std::vector<std::vector<std::string>> names(clients);
    LoopResult r = RunClosedLoop(
        clients, flags.seconds, 0, /*warm_up=*/true,
        [&](int t) { return CreateClient(stubs[t].get(), flags, &names[t]); }, failure, daemon.pid());
    if (failure.failed()) return Log(failure.message()), false;
    for (auto& v : names) jobs.insert(jobs.end(), v.begin(), v.end());
    table.Row("CreateConversionJob", std::to_string(clients), r,
              clients == flags.clients.front() ? "valid spec (qwen3-demo, ratio 0.25); every call OK" : "");
  }
  const size_t job_count = jobs.size();

  for (int clients : flags.clients) {
    auto stubs = Stubs(daemon.target(), clients, flags.shared_channel);
    LoopResult r = RunClosedLoop(
        clients, flags.seconds, 0, /*warm_up=*/true,
        [&](int t) -> CallFn {
          auto* stub = stubs[t].get();
          return [stub, t, &jobs](int64_t i) -> std::string {
            const std::string& name = jobs[(static_cast<size_t>(t) * 7919 + static_cast<size_t>(i + 1)) % jobs.size()];
            grpc::ClientContext ctx;
            v1::GetConversionJobRequest request;
            request.set_name(name);
            v1::ConversionJob job;
            grpc::Status status = stub->GetConversionJob(&ctx, request, &job);
            if (!status.ok()) return Describe("GetConversionJob", status);
            if (job.name() != name || job.state() != v1::ConversionJob::PENDING) {
              return "GetConversionJob(" + name + ") returned " + job.name() + " in state " +
                     std::to_string(job.state());
            }
            return "";
          };
        },
        failure, daemon.pid());
    if (failure.failed()) return Log(failure.message()), false;
    table.Row("GetConversionJob", std::to_string(clients), r,
              clients == flags.clients.front()
                  ? "PENDING jobs drawn from the " + std::to_string(job_count) + " created above"
                  : "");
  }

  // Watch fan-out: one stream per fresh job.
  std::vector<std::string> watched;
  CreateJobs(daemon.target(), flags, flags.watchers, 8, &watched, failure, daemon.pid());
  if (failure.failed()) return Log(failure.message()), false;
  const int n = static_cast<int>(watched.size());
  std::vector<std::unique_ptr<v1::ConversionService::Stub>> watch_stubs;
  for (int c = 0; c < flags.watch_channels; ++c) {
    watch_stubs.push_back(v1::ConversionService::NewStub(NewChannel(daemon.target())));
  }
  const int64_t rss_before = RssKiB(daemon.pid());
  WatchGroup group;
  std::vector<std::unique_ptr<Watcher>> watchers;
  const int64_t open_ns = NowNs();
  for (int i = 0; i < n; ++i) {
    watchers.push_back(std::make_unique<Watcher>(&group, watch_stubs[i % flags.watch_channels].get(), watched[i]));
  }
  const bool established = group.WaitEstablished(n, std::chrono::seconds(60));
  auto fail_watch = [&](const std::string& what) {
    Log(what);
    daemon.Stop();  // ends the streams, so the reactors can go
    if (!group.WaitDone(n, std::chrono::seconds(20))) {
      std::fflush(stderr);
      std::_Exit(1);
    }
    return false;
  };
  if (!established) return fail_watch("not every WatchConversionJob stream received its first event within 60 s");
  int64_t all_established_ns = 0;
  for (auto& w : watchers) all_established_ns = std::max(all_established_ns, w->first_ns());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const int64_t rss_streams = RssKiB(daemon.pid());

  // Cancel every watched job.
  std::vector<int64_t> cancel_start(n, 0);
  auto cancel_stubs = Stubs(daemon.target(), flags.cancel_clients, flags.shared_channel);
  std::atomic<int> next_cancel{0};  // RunClosedLoop makes exactly n calls in all: each takes the next job
  LoopResult cancels = RunClosedLoop(
      flags.cancel_clients, 0, n, /*warm_up=*/false,
      [&](int t) -> CallFn {
        auto* stub = cancel_stubs[t].get();
        return [stub, &watched, &cancel_start, &next_cancel](int64_t) -> std::string {
          const int index = next_cancel.fetch_add(1);
          grpc::ClientContext ctx;
          v1::CancelConversionJobRequest request;
          request.set_name(watched[index]);
          v1::ConversionJob job;
          cancel_start[index] = NowNs();
          grpc::Status status = stub->CancelConversionJob(&ctx, request, &job);
          if (!status.ok()) return Describe("CancelConversionJob", status);
          if (job.state() != v1::ConversionJob::CANCELLED) {
            return "CancelConversionJob(" + watched[index] + ") left state " + std::to_string(job.state());
          }
          return "";
        };
      },
      failure, daemon.pid());
  if (failure.failed()) return fail_watch(failure.message());
  if (!group.WaitDone(n, std::chrono::seconds(60))) {
    return fail_watch("not every WatchConversionJob stream ended within 60 s of the cancels");
  }
  std::vector<int64_t> delivery;
  int bad = 0;
  std::string first_bad;
  for (int i = 0; i < n; ++i) {
    const Watcher& w = *watchers[i];
    if (!w.status().ok() || w.cancelled_ns() == 0 || cancel_start[i] == 0) {
      if (bad++ == 0) {
        first_bad = watched[i] + ": " + Describe("WatchConversionJob", w.status()) +
                    (w.cancelled_ns() == 0 ? " (no CANCELLED state change)" : "");
      }
      continue;
    }
    delivery.push_back(w.cancelled_ns() - cancel_start[i]);
  }
  if (bad > 0) return Log(std::to_string(bad) + " watch streams went wrong; first: " + first_bad), false;
  std::sort(delivery.begin(), delivery.end());
  const std::string streams = std::to_string(n) + " streams";
  table.Add("WatchConversionJob: open " + streams, "-", std::to_string(n), "-", "-", "-", "-", "-",
            "all receiving after " + Fmt("%.0f ms", static_cast<double>(all_established_ns - open_ns) / 1e6) +
                " (one job per stream, " + std::to_string(flags.watch_channels) +
                " channels, callback API); server RSS " + MiB(rss_before * 1024) + " before, " +
                MiB(rss_streams * 1024) + " with the streams open (" +
                Fmt("%.1f", static_cast<double>(rss_streams - rss_before) / n) + " KiB/stream)");
  table.Row("CancelConversionJob (" + streams + " open)", std::to_string(flags.cancel_clients), cancels,
            "Cancel RPC latency (server CPU includes the watch deliveries)");
  LoopResult delivered;
  delivered.calls = static_cast<int64_t>(delivery.size());
  delivered.latency_ns = delivery;
  table.Add("Watch event delivery (Cancel start -> CANCELLED event)", std::to_string(flags.cancel_clients),
            std::to_string(delivery.size()), "-", Fmt("%.3f", PercentileMs(delivery, 0.5)),
            Fmt("%.3f", PercentileMs(delivery, 0.99)), "-", "-",
            "every stream got the CANCELLED state change and ended OK");
  watchers.clear();
  return true;
}

// Memory and create rate at `queued_jobs` PENDING jobs, on a second fresh flashmorphd.
bool BenchQueued(const Flags& flags, const std::string& dir, Table& table) {
  Daemon daemon;
  if (!daemon.Start(flags, dir)) return false;
  Log("flashmorphd pid " + std::to_string(daemon.pid()) + " for " + std::to_string(flags.queued_jobs) + " jobs");
  Failure failure;
  {
    auto probe = NewChannel(daemon.target());  // connected, so the idle RSS includes one connection
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const int64_t rss_before = RssKiB(daemon.pid());
  std::vector<std::string> names;
  LoopResult r =
      CreateJobs(daemon.target(), flags, flags.queued_jobs, flags.queued_clients, &names, failure, daemon.pid());
  if (failure.failed()) return Log(failure.message()), false;
  if (static_cast<int>(names.size()) != flags.queued_jobs) return Log("created fewer jobs than asked"), false;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const int64_t rss_after = RssKiB(daemon.pid());
  const std::string db = daemon.data_dir() + "/flashmorph.db";
  table.Row("CreateConversionJob to " + std::to_string(flags.queued_jobs) + " queued jobs",
            std::to_string(flags.queued_clients), r,
            "fresh server; RSS " + MiB(rss_before * 1024) + " before, " + MiB(rss_after * 1024) + " after (" +
                Fmt("%.2f", static_cast<double>(rss_after - rss_before) / flags.queued_jobs) + " KiB/job); SQLite " +
                MiB(FileSize(db)) + " + WAL " + MiB(FileSize(db + "-wal")));
  return true;
}

// The echo server's own process: serves on 127.0.0.1:0, writes {"port": N} to port_file, runs until SIGTERM.
int ServeEcho(const std::string& port_file) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  EchoService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) return Log("the echo server did not start"), 1;
  {
    std::ofstream out(port_file + ".tmp");
    out << "{\"port\": " << port << ", \"pid\": " << getpid() << "}\n";
  }
  std::filesystem::rename(port_file + ".tmp", port_file);
  int sig = 0;
  sigwait(&signals, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

void BenchEcho(const Flags& flags, const std::string& dir, Table& table, Failure& failure) {
  std::filesystem::create_directories(dir);
  Child echo;
  if (!echo.Start({SelfPath(), "--serve-echo", dir + "/port.json"}, dir + "/port.json", dir + "/echo.log")) {
    return failure.Set("the echo server did not start");
  }
  const std::string target = echo.target();
  for (int clients : flags.clients) {
    std::vector<std::unique_ptr<Echo::Stub>> stubs;
    std::shared_ptr<grpc::Channel> one = flags.shared_channel ? NewChannel(target) : nullptr;
    for (int t = 0; t < clients; ++t) stubs.push_back(Echo::NewStub(flags.shared_channel ? one : NewChannel(target)));
    LoopResult r = RunClosedLoop(
        clients, flags.seconds, 0, /*warm_up=*/true,
        [&](int t) -> CallFn {
          auto* stub = stubs[t].get();
          EchoMessage request;
          request.set_payload(std::string(static_cast<size_t>(flags.echo_bytes), 'x'));
          return [stub, request](int64_t) -> std::string {
            grpc::ClientContext ctx;
            EchoMessage response;
            grpc::Status status = stub->Echo(&ctx, request, &response);
            if (!status.ok()) return Describe("Echo", status);
            if (response.payload() != request.payload()) return "Echo returned another payload";
            return "";
          };
        },
        failure, echo.pid());
    if (failure.failed()) break;
    table.Row("Echo (ceiling: plain gRPC unary)", std::to_string(clients), r,
              clients == flags.clients.front()
                  ? "callback server in a child process, " + std::to_string(flags.echo_bytes) + "-byte payload"
                  : "");
  }
}

int Run(const Flags& flags) {
  if (flags.flashmorphd.empty() || access(flags.flashmorphd.c_str(), X_OK) != 0) {
    Log("no flashmorphd binary at '" + flags.flashmorphd + "' (pass --flashmorphd)");
    return 1;
  }
  if (!std::filesystem::exists(flags.repo_root + "/models/demo/qwen3-demo/config.json")) {
    Log("no models/demo/qwen3-demo/config.json under --repo-root " + flags.repo_root);
    return 1;
  }
  std::string dir = flags.work_dir;
  if (dir.empty()) {
    char tmpl[] = "/tmp/fm-service-bench-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return Log("mkdtemp failed"), 1;
    dir = tmpl;
  } else if (std::filesystem::exists(dir + "/a") || std::filesystem::exists(dir + "/b")) {
    Log("--work-dir " + dir + " already holds a run; give a fresh directory");
    return 1;
  }
  const std::string machine = MachineLine();
  Table table;
  bool ok = BenchFlashmorphd(flags, dir + "/a", table);
  ok = ok && BenchQueued(flags, dir + "/b", table);
  Failure echo_failure;
  if (ok) BenchEcho(flags, dir + "/echo", table, echo_failure);
  if (echo_failure.failed()) {
    Log(echo_failure.message());
    ok = false;
  }
  if (!ok) {
    Log("FAILED; flashmorphd logs and data kept in " + dir);
    return 1;
  }
  table.Print("## Service benchmark (bench/service_bench.sh)",
              {machine,
               "flashmorphd: fresh --data-dir on local disk (" + dir +
                   "), no workers (jobs stay PENDING), anonymous mode, SQLite synchronous=NORMAL; the benchmark "
                   "client runs on the same cores.",
               "Create/Get/Echo: closed loop for " + Fmt("%.1f", flags.seconds) +
                   " s per row, synchronous stubs, one thread per client, " + ClientsNote(flags) +
                   "; latency is per call as the client sees it. CPU/call: user + system CPU time of the server "
                   "process (/proc/<pid>/stat) and of the benchmark process (all its client threads) over the "
                   "measured window, divided by the calls.",
               "Cancel/Watch rows: " + std::to_string(flags.cancel_clients) +
                   " cancelling clients; delivery = Cancel call start to the CANCELLED state change received on "
                   "that job's watch stream."});
  if (!flags.keep && flags.work_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  return 0;
}

}  // namespace
}  // namespace fm::bench

int main(int argc, char** argv) {
  CLI::App app{"service_bench: flashmorphd's API throughput, latency, watch fan-out and memory (markdown table)"};
  fm::bench::Flags flags;
  app.add_option("--flashmorphd", flags.flashmorphd, "flashmorphd binary")->capture_default_str();
  app.add_option("--repo-root", flags.repo_root, "Repository root (models/demo/qwen3-demo; --model-root <it>/models)")
      ->capture_default_str();
  app.add_option("--work-dir", flags.work_dir, "Fresh directory for the data dirs and logs (default: mkdtemp in /tmp)");
  app.add_flag("--keep", flags.keep, "Keep the mkdtemp directory");
  app.add_option("--seconds", flags.seconds, "Duration of each Create/Get/Echo row")->capture_default_str();
  app.add_option("--clients", flags.clients, "Concurrent clients per row")->delimiter(',')->capture_default_str();
  app.add_flag("--shared-channel", flags.shared_channel, "All clients of a row share one channel");
  app.add_option("--watchers", flags.watchers, "WatchConversionJob streams (one job each)")->capture_default_str();
  app.add_option("--watch-channels", flags.watch_channels, "Channels the streams are spread over")
      ->capture_default_str();
  app.add_option("--cancel-clients", flags.cancel_clients, "Threads cancelling the watched jobs")
      ->capture_default_str();
  app.add_option("--queued-jobs", flags.queued_jobs, "Jobs created for the memory row")->capture_default_str();
  app.add_option("--queued-clients", flags.queued_clients, "Clients creating them")->capture_default_str();
  app.add_option("--echo-bytes", flags.echo_bytes, "Echo payload size")->capture_default_str();
  std::string serve_echo;
  app.add_option("--serve-echo", serve_echo, "Internal: be the echo server, writing its port to this file");
  CLI11_PARSE(app, argc, argv);
  if (!serve_echo.empty()) return fm::bench::ServeEcho(serve_echo);
  if (flags.clients.empty() || flags.watchers < 1 || flags.watch_channels < 1 || flags.cancel_clients < 1 ||
      flags.queued_jobs < 1 || flags.queued_clients < 1 || flags.seconds <= 0 ||
      std::any_of(flags.clients.begin(), flags.clients.end(), [](int c) { return c < 1; })) {
    std::fprintf(stderr, "service_bench: counts and --seconds must be positive\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  return fm::bench::Run(flags);
}
