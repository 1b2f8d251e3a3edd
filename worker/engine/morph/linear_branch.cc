#include "worker/engine/morph/linear_branch.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "kernels/fused_ops.h"
#include "kernels/linear_attention.h"

namespace fm {
namespace {

at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

// Rows of a [Hkv*D, ...] (or [Hkv*D]) tensor repeated so that query head h reads KV head h / n_rep.
at::Tensor RepeatKvHeads(const at::Tensor& t, int64_t kv_heads, int64_t n_rep, int64_t head_dim) {
  if (!t.defined() || n_rep == 1) return t.defined() ? t.clone() : t;
  std::vector<int64_t> shape = t.sizes().vec();
  std::vector<int64_t> split = {kv_heads, 1, head_dim};
  split.insert(split.end(), shape.begin() + 1, shape.end());
  std::vector<int64_t> expanded = split;
  expanded[1] = n_rep;
  shape[0] = kv_heads * n_rep * head_dim;
  return t.reshape(split).expand(expanded).reshape(shape).clone();
}

at::Tensor CloneOrEmpty(const at::Tensor& t) { return t.defined() ? t.clone() : t; }

}  // namespace

LinearBranch LinearBranch::FromTeacher(const ModelConfig& config, const DecoderLayerWeights& w, int64_t layer,
                                       const BranchSettings& settings, uint64_t seed) {
  LinearBranch b;
  b.settings_ = settings;
  b.layer_ = layer;
  b.num_layers_ = config.num_layers;
  b.num_heads_ = config.num_heads;
  b.head_dim_ = config.head_dim;
  b.eps_ = config.rms_norm_eps;
  const int64_t H = config.num_heads, D = config.head_dim, d = config.hidden_size;
  const int64_t n_rep = config.num_heads / config.num_kv_heads;
  b.q_proj_ = w.q_proj.clone();
  b.q_bias_ = CloneOrEmpty(w.q_bias);
  b.k_proj_ = RepeatKvHeads(w.k_proj, config.num_kv_heads, n_rep, D);
  b.v_proj_ = RepeatKvHeads(w.v_proj, config.num_kv_heads, n_rep, D);
  b.k_bias_ = RepeatKvHeads(w.k_bias, config.num_kv_heads, n_rep, D);
  b.v_bias_ = RepeatKvHeads(w.v_bias, config.num_kv_heads, n_rep, D);
  b.o_proj_ = w.o_proj.clone();
  b.o_bias_ = CloneOrEmpty(w.o_bias);
  b.q_norm_ = CloneOrEmpty(w.q_norm);
  b.k_norm_ = CloneOrEmpty(w.k_norm);

  // New parameters: drawn on the CPU in float32 from the seed, then moved to the teacher's dtype/device.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003ULL + static_cast<uint64_t>(layer));
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto normal = [&](std::vector<int64_t> shape, double std) { return at::normal(0.0, std, shape, gen, f32); };
  auto uniform = [&](std::vector<int64_t> shape, double lo, double hi) {
    return at::empty(shape, f32).uniform_(lo, hi, gen);
  };
  if (settings.kind == BranchKind::kLightning) {
    const double L = static_cast<double>(config.num_layers);
    const double depth = L > 1 ? 1.0 - static_cast<double>(layer) / (L - 1) + 1e-5 : 1.0 + 1e-5;
    std::vector<float> decay(H);
    for (int64_t h = 0; h < H; ++h)
      decay[h] = static_cast<float>(-std::pow(2.0, -8.0 * static_cast<double>(h + 1) / static_cast<double>(H)) * depth);
    b.lightning_decay_ = at::tensor(decay, f32);
  }
  if (settings.kind == BranchKind::kGla) {
    const int64_t r = settings.gla_low_rank_dim;
    b.gk_proj0_ = normal({r, d}, 0.02);
    b.gk_proj1_ = normal({H * D, r}, 0.02);
    b.gk_bias_ = at::zeros({H * D}, f32);
  }
  if (settings.kind == BranchKind::kGatedDeltaNet) {
    b.a_proj_ = normal({H, d}, 0.02);
    b.b_proj_ = normal({H, d}, 0.02);
    b.a_log_ = at::log(uniform({H}, 1.0, 16.0));
    at::Tensor dt = at::exp(uniform({H}, std::log(1e-3), std::log(1e-1)));
    b.dt_bias_ = dt + at::log(-at::expm1(-dt));
  }
  if (settings.kind != BranchKind::kLightning) {
    b.g_proj_ = at::zeros({H * D, d}, f32);
    b.g_bias_ = at::full({H * D}, 1.2785, f32);
    b.o_norm_ = at::ones({D}, f32);
  }
  b.To(w.q_proj.scalar_type(), w.q_proj.device());
  return b;
}

std::vector<std::pair<std::string, at::Tensor*>> LinearBranch::NamedTensors() {
  std::vector<std::pair<std::string, at::Tensor*>> out = {
      {"q_proj.weight", &q_proj_},      {"k_proj.weight", &k_proj_},
      {"v_proj.weight", &v_proj_},      {"o_proj.weight", &o_proj_},
      {"q_proj.bias", &q_bias_},        {"k_proj.bias", &k_bias_},
      {"v_proj.bias", &v_bias_},        {"o_proj.bias", &o_bias_},
      {"q_norm.weight", &q_norm_},      {"k_norm.weight", &k_norm_},
      {"gk_proj.0.weight", &gk_proj0_}, {"gk_proj.1.weight", &gk_proj1_},
      {"gk_proj.1.bias", &gk_bias_},    {"a_proj.weight", &a_proj_},
      {"b_proj.weight", &b_proj_},      {"A_log", &a_log_},
      {"dt_bias", &dt_bias_},           {"g_proj.weight", &g_proj_},
      {"g_proj.bias", &g_bias_},        {"o_norm.weight", &o_norm_}};
  std::vector<std::pair<std::string, at::Tensor*>> defined;
  for (auto& p : out)
    if (p.second->defined()) defined.push_back(p);
  return defined;
}

std::vector<at::Tensor> LinearBranch::Parameters() {
  std::vector<at::Tensor> out;
  for (auto& [name, t] : NamedTensors()) out.push_back(*t);
  return out;
}

void LinearBranch::SetRequiresGrad(bool on) {
  for (auto& [name, t] : NamedTensors()) t->requires_grad_(on);
}

void LinearBranch::To(at::ScalarType dtype, at::Device device) {
  for (auto& [name, t] : NamedTensors()) *t = t->to(device, dtype).detach();
  if (lightning_decay_.defined()) lightning_decay_ = lightning_decay_.to(device, at::kFloat);
}

at::Tensor LinearBranch::HeadOutputs(const at::Tensor& x, at::Tensor* state) const {
  return HeadOutputsFrom(x, Linear(x, q_proj_, q_bias_), Linear(x, k_proj_, k_bias_), Linear(x, v_proj_, v_bias_),
                         state);
}

at::Tensor LinearBranch::HeadOutputsFrom(const at::Tensor& x, const at::Tensor& q_proj, const at::Tensor& k_proj,
                                         const at::Tensor& v_proj, at::Tensor* state) const {
  const int64_t B = x.size(0), T = x.size(1), H = num_heads_, D = head_dim_;
  auto heads = [&](const at::Tensor& t) { return t.view({B, T, H, D}); };
  at::Tensor q = heads(q_proj);
  at::Tensor k = heads(k_proj);
  at::Tensor v = heads(v_proj);
  const BranchKind kind = settings_.kind;
  // Feature maps in one pass per tensor, written in the kernels' layout [B, H, T, D]: (q/k norm), then silu for
  // Lightning; silu and L2 normalisation for Gated DeltaNet; identity for GLA; q scaled by D^-1/2.
  kernels::HeadTransformSpec spec;
  spec.eps = eps_;
  spec.silu = kind != BranchKind::kGla;
  spec.l2 = kind == BranchKind::kGatedDeltaNet;
  spec.heads_first = true;
  spec.norm_weight = q_norm_;
  spec.scale = 1.0 / std::sqrt(static_cast<double>(D));
  q = kernels::HeadTransform(q, spec);
  spec.norm_weight = k_norm_;
  spec.scale = 1.0;
  k = kernels::HeadTransform(k, spec);
  v = v.transpose(1, 2);
  at::Tensor initial = state ? *state : at::Tensor();
  kernels::LinearAttentionResult r;
  if (kind == BranchKind::kGatedDeltaNet) {
    at::Tensor xf = x.to(at::kFloat);
    at::Tensor g = -at::exp(a_log_.to(at::kFloat)) *
                   at::softplus(at::linear(xf, a_proj_.to(at::kFloat)) + dt_bias_.to(at::kFloat));  // [B,T,H]
    at::Tensor beta = at::sigmoid(at::linear(xf, b_proj_.to(at::kFloat)));
    g = g.transpose(1, 2).contiguous();
    beta = beta.transpose(1, 2).contiguous();
    r = state && T == 1 ? kernels::GatedDeltaRuleRecurrent(q, k, v, g, beta, initial)
                        : kernels::GatedDeltaRuleChunked(q, k, v, g, beta, initial, settings_.chunk_size);
  } else {
    at::Tensor g;
    if (kind == BranchKind::kLightning) {
      g = lightning_decay_.view({1, H, 1}).expand({B, H, T});
    } else {
      at::Tensor xf = x.to(at::kFloat);
      at::Tensor low = at::linear(xf, gk_proj0_.to(at::kFloat));
      g = at::log_sigmoid(at::linear(low, gk_proj1_.to(at::kFloat), gk_bias_.to(at::kFloat))) /
          settings_.gla_gate_normalizer;
      g = g.view({B, T, H, D}).transpose(1, 2);
    }
    r = state && T == 1 ? kernels::GatedLinearAttentionRecurrent(q, k, v, g, initial)
                        : kernels::GatedLinearAttentionChunked(q, k, v, g, initial, settings_.chunk_size);
  }
  if (state) *state = r.final_state;
  // Output norm (RMS without a weight for Lightning; with o_norm and the SiLU output gate otherwise), back in
  // [B, T, H, D].
  kernels::HeadTransformSpec norm;
  norm.eps = eps_;
  if (kind == BranchKind::kLightning) {
    norm.unit_norm = true;
  } else {
    norm.norm_weight = o_norm_;
  }
  at::Tensor o = kernels::HeadTransform(r.output.transpose(1, 2), norm);
  if (kind != BranchKind::kLightning) o = kernels::SwiGlu(Linear(x, g_proj_, g_bias_).view({B, T, H, D}), o);
  return o.reshape({B, T, H * D});
}

at::Tensor LinearBranch::OutProj(const at::Tensor& heads) const { return Linear(heads, o_proj_, o_bias_); }

}  // namespace fm
