#include "worker/engine/morph/optimizer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

namespace fm {

AdamW::AdamW(std::vector<at::Tensor> params, AdamWSettings settings)
    : params_(std::move(params)), settings_(settings) {
  for (const at::Tensor& p : params_) {
    m_.push_back(at::zeros(p.sizes(), p.options().dtype(at::kFloat)));
    v_.push_back(at::zeros(p.sizes(), p.options().dtype(at::kFloat)));
  }
}

void AdamW::ZeroGrad() {
  for (at::Tensor& p : params_) {
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
  }
}

double AdamW::Step(double lr) {
  at::NoGradGuard no_grad;
  double sq = 0;
  for (const at::Tensor& p : params_)
    if (p.grad().defined()) sq += p.grad().to(at::kDouble).pow(2).sum().item<double>();
  const double norm = std::sqrt(sq);
  const double clip = settings_.grad_clip > 0 && norm > settings_.grad_clip ? settings_.grad_clip / norm : 1.0;
  ++step_;
  const double bc1 = 1 - std::pow(settings_.beta1, static_cast<double>(step_));
  const double bc2 = 1 - std::pow(settings_.beta2, static_cast<double>(step_));
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    if (!p.grad().defined()) continue;
    at::Tensor g = p.grad().to(at::kFloat) * clip;
    m_[i].mul_(settings_.beta1).add_(g, 1 - settings_.beta1);
    v_[i].mul_(settings_.beta2).addcmul_(g, g, 1 - settings_.beta2);
    at::Tensor update = (m_[i] / bc1) / ((v_[i] / bc2).sqrt() + settings_.eps);
    if (settings_.weight_decay > 0) update = update + settings_.weight_decay * p.to(at::kFloat);
    p.sub_((lr * update).to(p.scalar_type()));
  }
  ZeroGrad();
  return norm;
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::State() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < m_.size(); ++i) {
    out.emplace_back("m." + std::to_string(i), m_[i]);
    out.emplace_back("v." + std::to_string(i), v_[i]);
  }
  out.emplace_back("step", at::tensor({static_cast<int64_t>(step_)}));
  return out;
}

void AdamW::LoadState(const std::vector<std::pair<std::string, at::Tensor>>& state) {
  for (const auto& [name, t] : state) {
    if (name == "step") {
      step_ = t.item<int64_t>();
    } else if (name.size() > 2 && (name[0] == 'm' || name[0] == 'v') && name[1] == '.') {
      const size_t i = std::stoul(name.substr(2));
      if (i < m_.size()) (name[0] == 'm' ? m_ : v_)[i].copy_(t);
    }
  }
}

double CosineLr(int64_t step, int64_t total, double peak, double floor, int64_t warmup) {
  if (warmup > 0 && step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double span = std::max<int64_t>(1, total - warmup);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  return floor + 0.5 * (peak - floor) * (1 + std::cos(M_PI * progress));
}

}  // namespace fm
