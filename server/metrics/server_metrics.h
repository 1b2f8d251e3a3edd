// flashmorphd's Prometheus metrics (DESIGN.md §2 "Metrics"): names in base units with the flashmorph_ prefix,
// `_total` on counters, histograms for latencies, no job ids in labels. The scheduler and the gRPC layer call the
// typed methods below; an Exposer (started by flashmorphd on --metrics-listen) serves registry() at /metrics.
// Thread-safe. Label children are created once and cached (prometheus-cpp's Family::Add is slow).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace fm::server {

class ServerMetrics {
 public:
  ServerMetrics();
  ~ServerMetrics();
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // Jobs.
  void JobSubmitted(std::string_view tenant);
  void JobFinished(std::string_view tenant, std::string_view result);  // "succeeded", "failed", "cancelled"
  void SetJobsInState(std::string_view state, double count);           // "pending", "running", ...
  void ObserveQueueWait(double seconds);                               // PENDING -> RUNNING, per attempt
  void ObserveStageDuration(std::string_view stage, double seconds);   // "calibrate", "gates", ...
  void JobRetried(std::string_view reason);                            // "lease_expired", "worker_failure"
  void LeaseExpired();
  void QuotaRejected(std::string_view tenant, std::string_view limit);  // "queued_jobs", "gpus"

  // Workers.
  void SetWorkersInState(std::string_view state, double count);  // "idle", "busy", "lost"
  void SetWorkerTokensPerSecond(std::string_view worker, double tokens_per_second);
  void SetWorkerGpuMemory(std::string_view worker, double bytes);  // total memory of the worker's GPUs
  void ForgetWorker(std::string_view worker);

  // gRPC (recorded by the server interceptor).
  void RpcFinished(std::string_view method, std::string_view code, double seconds);

 private:
  using Key = std::pair<std::string, std::string>;
  prometheus::Counter& CounterChild(prometheus::Family<prometheus::Counter>& family,
                                    std::map<Key, prometheus::Counter*>& cache, std::string_view l1,
                                    std::string_view v1, std::string_view l2 = {}, std::string_view v2 = {});
  prometheus::Gauge& GaugeChild(prometheus::Family<prometheus::Gauge>& family,
                                std::map<Key, prometheus::Gauge*>& cache, std::string_view label,
                                std::string_view value);
  prometheus::Histogram& HistogramChild(prometheus::Family<prometheus::Histogram>& family,
                                        std::map<Key, prometheus::Histogram*>& cache, std::string_view label,
                                        std::string_view value, int buckets_kind);

  std::shared_ptr<prometheus::Registry> registry_;
  std::mutex mu_;
  prometheus::Family<prometheus::Counter>* jobs_submitted_;
  prometheus::Family<prometheus::Counter>* jobs_finished_;
  prometheus::Family<prometheus::Gauge>* jobs_;
  prometheus::Histogram* queue_wait_;
  prometheus::Family<prometheus::Histogram>* stage_duration_;
  prometheus::Family<prometheus::Counter>* retries_;
  prometheus::Counter* lease_expirations_;
  prometheus::Family<prometheus::Counter>* quota_rejections_;
  prometheus::Family<prometheus::Gauge>* workers_;
  prometheus::Family<prometheus::Gauge>* worker_tokens_per_second_;
  prometheus::Family<prometheus::Gauge>* worker_gpu_memory_;
  prometheus::Family<prometheus::Counter>* rpcs_;
  prometheus::Family<prometheus::Histogram>* rpc_duration_;
  std::map<Key, prometheus::Counter*> submitted_c_, finished_c_, retries_c_, quota_c_, rpcs_c_;
  std::map<Key, prometheus::Gauge*> jobs_g_, workers_g_, tps_g_, gpu_mem_g_;
  std::map<Key, prometheus::Histogram*> stage_h_, rpc_h_;
};

}  // namespace fm::server
