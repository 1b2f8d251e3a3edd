#include "worker/engine/model/attention_record.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/SDPBackend.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

namespace fm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::atomic<int64_t>& Budget() {
  static std::atomic<int64_t> bytes{[] {
    const char* env = std::getenv("FLASHMORPH_ATTENTION_RECORD_MB");
    return env != nullptr ? std::max<int64_t>(0, std::atoll(env)) << 20 : int64_t{0};
  }()};
  return bytes;
}

bool Gqa(const at::Tensor& q, const at::Tensor& k) { return q.size(1) != k.size(1); }

bool CudnnChosen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  if (!q.is_cuda() || (q.scalar_type() != at::kBFloat16 && q.scalar_type() != at::kHalf)) return false;
  const int64_t choice = at::_fused_sdp_choice(q, k, v, {}, 0.0, /*is_causal=*/true, scale, Gqa(q, k));
  return choice == static_cast<int64_t>(at::SDPBackend::cudnn_attention);
}

class ReplayFunction : public torch::autograd::Function<ReplayFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            double scale, const AttentionRecord& r) {
    ctx->save_for_backward({q, k, v, r.out, r.logsumexp, r.cum_seq_q, r.cum_seq_k, r.philox_seed, r.philox_offset});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["max_q"] = r.max_q;
    ctx->saved_data["max_k"] = r.max_k;
    return r.out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto [dq, dk, dv] = at::_scaled_dot_product_cudnn_attention_backward(
        grads[0], s[0], s[1], s[2], s[3], s[4], s[7], s[8], /*attn_bias=*/at::Tensor(), s[5], s[6],
        ctx->saved_data["max_q"].toInt(), ctx->saved_data["max_k"].toInt(), /*dropout_p=*/0.0, /*is_causal=*/true,
        ctx->saved_data["scale"].toDouble());
    return {dq, dk, dv, at::Tensor(), at::Tensor()};
  }
};

double RelDiff(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.to(at::kFloat), y = b.to(at::kFloat);
  return (x - y).norm().item<double>() / (y.norm().item<double>() + 1e-30);
}

// Records and replays a small causal attention of this dtype/device/GQA shape and compares output and gradients
// with the plain op's.
bool SelfCheck(const at::Tensor& like_q, const at::Tensor& like_k, double scale) {
  try {
    at::AutoGradMode grad_on(true);
    // Inputs drawn on the CPU from a generator of its own (the device's random stream stays untouched).
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(20261208);
    const int64_t H = like_q.size(1), Hkv = like_k.size(1), D = like_q.size(3), T = 256;
    auto draw = [&](int64_t heads) {
      return at::randn({1, heads, T, D}, gen, at::TensorOptions().dtype(at::kFloat))
          .to(like_q.device(), like_q.scalar_type());
    };
    at::Tensor q0 = draw(H), k0 = draw(Hkv), v0 = draw(Hkv), dy = draw(H);
    auto leaves = [&] {
      return std::make_tuple(q0.clone().requires_grad_(), k0.clone().requires_grad_(), v0.clone().requires_grad_());
    };
    auto [q1, k1, v1] = leaves();
    at::Tensor y1 = at::scaled_dot_product_attention(q1, k1, v1, {}, 0.0, true, scale, Hkv != H);
    y1.backward(dy);
    AttentionRecord record;
    {
      at::NoGradGuard no_grad;
      RecordAttention(q0, k0, v0, scale, &record);
    }
    auto [q2, k2, v2] = leaves();
    at::Tensor y2 = ReplayAttention(q2, k2, v2, scale, record);
    y2.backward(dy);
    const double tol = 1e-2;
    return RelDiff(y2, y1) <= tol && RelDiff(q2.grad(), q1.grad()) <= tol && RelDiff(k2.grad(), k1.grad()) <= tol &&
           RelDiff(v2.grad(), v1.grad()) <= tol;
  } catch (const c10::Error&) {
    return false;
  }
}

}  // namespace

int64_t SetAttentionRecordBudget(int64_t bytes) { return Budget().exchange(std::max<int64_t>(0, bytes)); }
int64_t AttentionRecordBudget() { return Budget().load(); }

int64_t AttentionRecordBytes(const at::Tensor& q) {
  return q.numel() * static_cast<int64_t>(q.element_size()) + q.size(0) * q.size(1) * q.size(2) * 4;
}

bool CanRecordAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  if (!CudnnChosen(q, k, v, scale)) return false;
  static std::mutex mu;
  static std::map<std::string, bool> checked;  // by device, dtype, heads, key/value heads, head size
  const std::string key = q.device().str() + "/" + std::string(c10::toString(q.scalar_type())) + "/" +
                          std::to_string(q.size(1)) + "/" + std::to_string(k.size(1)) + "/" + std::to_string(q.size(3));
  std::lock_guard<std::mutex> lock(mu);
  auto it = checked.find(key);
  if (it == checked.end()) it = checked.emplace(key, SelfCheck(q, k, scale)).first;
  return it->second;
}

at::Tensor RecordAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                           AttentionRecord* record) {
  auto r = at::_scaled_dot_product_cudnn_attention(q, k, v, {}, /*compute_log_sumexp=*/true, /*dropout_p=*/0.0,
                                                   /*is_causal=*/true, /*return_debug_mask=*/false, scale);
  record->out = std::get<0>(r);
  record->logsumexp = std::get<1>(r);
  record->cum_seq_q = std::get<2>(r);
  record->cum_seq_k = std::get<3>(r);
  record->max_q = std::get<4>(r).expect_int();
  record->max_k = std::get<5>(r).expect_int();
  record->philox_seed = std::get<6>(r);
  record->philox_offset = std::get<7>(r);
  return record->out;
}

at::Tensor ReplayAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                           const AttentionRecord& record) {
  TORCH_CHECK(record.recorded(), "ReplayAttention: nothing recorded");
  return ReplayFunction::apply(q, k, v, scale, record);
}

}  // namespace fm
