#include "worker/engine/model/rope.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numbers>

namespace fm {
namespace {

// base^(2i/dim) for i = 0..dim/2-1, in fp32 as transformers computes it.
at::Tensor PosFreqs(double base, int64_t dim, const at::TensorOptions& f32) {
  at::Tensor exponent = at::arange(0, dim, 2, f32.dtype(at::kLong)).to(at::kFloat) / static_cast<double>(dim);
  return at::pow(at::Scalar(base), exponent);
}

at::Tensor Llama3InvFreq(const at::Tensor& inv_freq, const RopeConfig& r) {
  const double old_len = static_cast<double>(r.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / r.low_freq_factor;
  const double high_freq_wavelen = old_len / r.high_freq_factor;
  at::Tensor wavelen = (2 * std::numbers::pi) / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / r.factor, inv_freq);
  at::Tensor smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
  at::Tensor medium = at::logical_and(at::logical_not(wavelen < high_freq_wavelen),
                                      at::logical_not(wavelen > low_freq_wavelen));
  return at::where(medium, smoothed, scaled);
}

at::Tensor YarnInvFreq(const RopeConfig& r, int64_t dim, const at::TensorOptions& f32) {
  const double base = r.theta;
  at::Tensor pos_freqs = PosFreqs(base, dim, f32);
  at::Tensor extrapolation = 1.0 / pos_freqs;
  at::Tensor interpolation = 1.0 / (r.factor * pos_freqs);
  const double orig = static_cast<double>(r.original_max_position_embeddings);
  auto correction_dim = [&](double rotations) {
    return (dim * std::log(orig / (rotations * 2 * std::numbers::pi))) / (2 * std::log(base));
  };
  double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  at::Tensor ramp = at::clamp((at::arange(dim / 2, f32) - low) / (high - low), 0, 1);
  at::Tensor extrapolation_factor = 1 - ramp;
  return interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
}

}  // namespace

RopeFrequencies ComputeRopeFrequencies(const ModelConfig& c, const at::Device& device) {
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCPU);
  const int64_t dim = c.head_dim;
  RopeFrequencies out;
  at::Tensor inv_freq;
  switch (c.rope.type) {
    case RopeType::kDefault:
      inv_freq = 1.0 / PosFreqs(c.rope.theta, dim, f32);
      break;
    case RopeType::kLinear:
      inv_freq = 1.0 / PosFreqs(c.rope.theta, dim, f32) / c.rope.factor;
      break;
    case RopeType::kLlama3:
      inv_freq = Llama3InvFreq(1.0 / PosFreqs(c.rope.theta, dim, f32), c.rope);
      break;
    case RopeType::kYarn:
      inv_freq = YarnInvFreq(c.rope, dim, f32);
      out.attention_scaling = c.rope.attention_factor;
      break;
  }
  if (!c.rope.freq_factors.empty()) {
    at::Tensor factors = at::tensor(c.rope.freq_factors, f32);
    inv_freq = inv_freq / factors;
  }
  out.inv_freq = inv_freq.to(device);
  return out;
}

RopeTables MakeRopeTables(const RopeFrequencies& f, int64_t start, int64_t length, at::ScalarType dtype) {
  at::Tensor pos = at::arange(start, start + length, f.inv_freq.options().dtype(at::kLong)).to(at::kFloat);
  at::Tensor freqs = at::outer(pos, f.inv_freq);  // [T, hd/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (f.attention_scaling != 1.0) {
    cos = cos * f.attention_scaling;
    sin = sin * f.attention_scaling;
  }
  return {cos.to(dtype), sin.to(dtype)};
}

RopeOnDevices::RopeOnDevices(RopeTables tables) { copies_.emplace_back(tables.cos.device(), std::move(tables)); }

const RopeTables& RopeOnDevices::On(const at::Device& device) {
  for (const auto& [d, t] : copies_)
    if (d == device) return t;
  const RopeTables& base = copies_.front().second;
  copies_.emplace_back(device, RopeTables{base.cos.to(device), base.sin.to(device)});
  return copies_.back().second;
}

}  // namespace fm
