#include "server/metrics/server_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace fm::server {
namespace {

// Latency buckets for RPCs (seconds) and for long phases (queue waits, engine stages).
const prometheus::Histogram::BucketBoundaries& RpcBuckets() {
  static const prometheus::Histogram::BucketBoundaries b = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                            0.1,    0.25,  0.5,    1,     2.5,  5,     10,  30};
  return b;
}
const prometheus::Histogram::BucketBoundaries& LongBuckets() {
  static const prometheus::Histogram::BucketBoundaries b = {0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600,
                                                            7200, 21600, 86400};
  return b;
}

}  // namespace

ServerMetrics::ServerMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  jobs_submitted_ = &prometheus::BuildCounter()
                         .Name("flashmorph_jobs_submitted_total")
                         .Help("Conversion jobs created, by tenant")
                         .Register(r);
  jobs_finished_ = &prometheus::BuildCounter()
                        .Name("flashmorph_jobs_finished_total")
                        .Help("Conversion jobs that reached a terminal state, by tenant and result")
                        .Register(r);
  jobs_ = &prometheus::BuildGauge().Name("flashmorph_jobs").Help("Conversion jobs by state").Register(r);
  for (const char* s : {"pending", "running", "cancelling"}) GaugeChild(*jobs_, jobs_g_, "state", s).Set(0);
  queue_wait_ = &prometheus::BuildHistogram()
                     .Name("flashmorph_job_queue_wait_seconds")
                     .Help("Time a job waited in PENDING before an attempt started")
                     .Register(r)
                     .Add({}, LongBuckets());
  stage_duration_ = &prometheus::BuildHistogram()
                         .Name("flashmorph_stage_duration_seconds")
                         .Help("Wall time of engine stages of succeeded jobs, by stage")
                         .Register(r);
  retries_ = &prometheus::BuildCounter()
                  .Name("flashmorph_job_retries_total")
                  .Help("Attempts put back to PENDING after an infrastructure failure, by reason")
                  .Register(r);
  lease_expirations_ = &prometheus::BuildCounter()
                            .Name("flashmorph_lease_expirations_total")
                            .Help("Worker leases that lapsed without a heartbeat")
                            .Register(r)
                            .Add({});
  quota_rejections_ = &prometheus::BuildCounter()
                           .Name("flashmorph_quota_rejections_total")
                           .Help("Create requests refused by a tenant limit, by tenant and limit")
                           .Register(r);
  workers_ = &prometheus::BuildGauge().Name("flashmorph_workers").Help("Registered workers by state").Register(r);
  for (const char* s : {"idle", "busy", "lost"}) GaugeChild(*workers_, workers_g_, "state", s).Set(0);
  worker_tokens_per_second_ = &prometheus::BuildGauge()
                                   .Name("flashmorph_engine_tokens_per_second")
                                   .Help("Latest engine throughput reported by each busy worker")
                                   .Register(r);
  worker_gpu_memory_ = &prometheus::BuildGauge()
                            .Name("flashmorph_worker_gpu_memory_bytes")
                            .Help("Total GPU memory of each registered worker")
                            .Register(r);
  rpcs_ = &prometheus::BuildCounter()
               .Name("flashmorph_grpc_requests_total")
               .Help("Finished gRPC calls, by method and status code")
               .Register(r);
  rpc_duration_ = &prometheus::BuildHistogram()
                       .Name("flashmorph_grpc_request_duration_seconds")
                       .Help("gRPC call latency (streams: until the status), by method")
                       .Register(r);
}

ServerMetrics::~ServerMetrics() = default;

prometheus::Counter& ServerMetrics::CounterChild(prometheus::Family<prometheus::Counter>& family,
                                                 std::map<Key, prometheus::Counter*>& cache, std::string_view l1,
                                                 std::string_view v1, std::string_view l2, std::string_view v2) {
  Key key{std::string(v1), std::string(v2)};
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  std::map<std::string, std::string> labels{{std::string(l1), std::string(v1)}};
  if (!l2.empty()) labels.emplace(std::string(l2), std::string(v2));
  auto* c = &family.Add(labels);
  cache.emplace(std::move(key), c);
  return *c;
}

prometheus::Gauge& ServerMetrics::GaugeChild(prometheus::Family<prometheus::Gauge>& family,
                                             std::map<Key, prometheus::Gauge*>& cache, std::string_view label,
                                             std::string_view value) {
  Key key{std::string(value), ""};
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  auto* g = &family.Add({{std::string(label), std::string(value)}});
  cache.emplace(std::move(key), g);
  return *g;
}

prometheus::Histogram& ServerMetrics::HistogramChild(prometheus::Family<prometheus::Histogram>& family,
                                                     std::map<Key, prometheus::Histogram*>& cache,
                                                     std::string_view label, std::string_view value,
                                                     int buckets_kind) {
  Key key{std::string(value), ""};
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  auto* h = &family.Add({{std::string(label), std::string(value)}}, buckets_kind == 0 ? RpcBuckets() : LongBuckets());
  cache.emplace(std::move(key), h);
  return *h;
}

void ServerMetrics::JobSubmitted(std::string_view tenant) {
  std::lock_guard<std::mutex> lock(mu_);
  CounterChild(*jobs_submitted_, submitted_c_, "tenant", tenant).Increment();
}

void ServerMetrics::JobFinished(std::string_view tenant, std::string_view result) {
  std::lock_guard<std::mutex> lock(mu_);
  CounterChild(*jobs_finished_, finished_c_, "tenant", tenant, "result", result).Increment();
}

void ServerMetrics::SetJobsInState(std::string_view state, double count) {
  std::lock_guard<std::mutex> lock(mu_);
  GaugeChild(*jobs_, jobs_g_, "state", state).Set(count);
}

void ServerMetrics::ObserveQueueWait(double seconds) { queue_wait_->Observe(seconds); }

void ServerMetrics::ObserveStageDuration(std::string_view stage, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  HistogramChild(*stage_duration_, stage_h_, "stage", stage, 1).Observe(seconds);
}

void ServerMetrics::JobRetried(std::string_view reason) {
  std::lock_guard<std::mutex> lock(mu_);
  CounterChild(*retries_, retries_c_, "reason", reason).Increment();
}

void ServerMetrics::LeaseExpired() { lease_expirations_->Increment(); }

void ServerMetrics::QuotaRejected(std::string_view tenant, std::string_view limit) {
  std::lock_guard<std::mutex> lock(mu_);
  CounterChild(*quota_rejections_, quota_c_, "tenant", tenant, "limit", limit).Increment();
}

void ServerMetrics::SetWorkersInState(std::string_view state, double count) {
  std::lock_guard<std::mutex> lock(mu_);
  GaugeChild(*workers_, workers_g_, "state", state).Set(count);
}

void ServerMetrics::SetWorkerTokensPerSecond(std::string_view worker, double tokens_per_second) {
  std::lock_guard<std::mutex> lock(mu_);
  GaugeChild(*worker_tokens_per_second_, tps_g_, "worker", worker).Set(tokens_per_second);
}

void ServerMetrics::SetWorkerGpuMemory(std::string_view worker, double bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  GaugeChild(*worker_gpu_memory_, gpu_mem_g_, "worker", worker).Set(bytes);
}

void ServerMetrics::ForgetWorker(std::string_view worker) {
  std::lock_guard<std::mutex> lock(mu_);
  Key key{std::string(worker), ""};
  if (auto it = tps_g_.find(key); it != tps_g_.end()) {
    worker_tokens_per_second_->Remove(it->second);
    tps_g_.erase(it);
  }
  if (auto it = gpu_mem_g_.find(key); it != gpu_mem_g_.end()) {
    worker_gpu_memory_->Remove(it->second);
    gpu_mem_g_.erase(it);
  }
}

void ServerMetrics::RpcFinished(std::string_view method, std::string_view code, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  CounterChild(*rpcs_, rpcs_c_, "method", method, "code", code).Increment();
  HistogramChild(*rpc_duration_, rpc_h_, "method", method, 0).Observe(seconds);
}

}  // namespace fm::server
