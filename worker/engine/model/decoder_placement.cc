#include "worker/engine/model/decoder_placement.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/util/Exception.h>

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "worker/engine/common/str_cat.h"

namespace fm {
namespace {

at::Tensor Place(const at::Tensor& t, const at::Device& device) {
  return t.defined() ? t.detach().to(device) : t;  // a no-op (same storage) when already on `device`
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> BalancedLayerSplit(int64_t num_layers, int64_t parts) {
  if (parts < 1 || parts > num_layers)
    return absl::InvalidArgumentError(StrCat("cannot split ", num_layers, " layers into ", parts, " parts"));
  std::vector<int64_t> part_of(num_layers);
  const int64_t base = num_layers / parts, extra = num_layers % parts;
  int64_t l = 0;
  for (int64_t p = 0; p < parts; ++p)
    for (int64_t i = 0; i < base + (p < extra ? 1 : 0); ++i) part_of[l++] = p;
  return part_of;
}

absl::StatusOr<std::unique_ptr<Decoder>> PlaceDecoder(const Decoder& source,
                                                      const std::vector<at::Device>& layer_devices) {
  const ModelConfig& c = source.config();
  if (static_cast<int64_t>(layer_devices.size()) != c.num_layers)
    return absl::InvalidArgumentError(
        StrCat("placement names ", layer_devices.size(), " devices for ", c.num_layers, " layers"));
  try {
    const DecoderWeights& src = source.weights();
    DecoderWeights w;
    const bool tied = src.lm_head.defined() && src.lm_head.is_same(src.embed_tokens);
    w.embed_tokens = Place(src.embed_tokens, layer_devices.front());
    w.final_norm = Place(src.final_norm, layer_devices.back());
    w.lm_head = tied ? w.embed_tokens : Place(src.lm_head, layer_devices.back());
    w.layers.resize(c.num_layers);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      w.layers[l] = src.layers[l];
      for (auto& [name, t] : NamedLayerTensors(w.layers[l])) *t = Place(*t, layer_devices[l]);
    }
    return std::make_unique<Decoder>(c, std::move(w));
  } catch (const c10::Error& e) {
    return absl::InternalError(StrCat("placing the decoder failed: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<std::unique_ptr<Decoder>> ReplicateDecoder(const Decoder& source, const at::Device& device) {
  return PlaceDecoder(source, std::vector<at::Device>(source.config().num_layers, device));
}

absl::StatusOr<std::vector<at::Device>> ParseDeviceList(const std::string& text) {
  std::vector<at::Device> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    const std::string name(absl::StripAsciiWhitespace(part));
    if (name == "cuda:all" || name == "cuda:*") {
      if (!at::hasCUDA()) return absl::FailedPreconditionError("device cuda:all: this build or machine has no CUDA");
      const int64_t n = static_cast<int64_t>(at::detail::getCUDAHooks().deviceCount());
      for (int64_t i = 0; i < n; ++i) out.emplace_back(at::kCUDA, static_cast<c10::DeviceIndex>(i));
      continue;
    }
    try {
      out.emplace_back(name);
    } catch (const c10::Error&) {
      return absl::InvalidArgumentError(StrCat("'", name, "' is not a device (cpu, cuda, cuda:N, cuda:all)"));
    }
    const at::Device& d = out.back();
    if (d.is_cuda()) {
      if (!at::hasCUDA())
        return absl::FailedPreconditionError(StrCat("device ", name, ": this build or machine has no CUDA"));
      const int64_t n = static_cast<int64_t>(at::detail::getCUDAHooks().deviceCount());
      if (d.has_index() && d.index() >= n)
        return absl::FailedPreconditionError(StrCat("device ", name, ": only ", n, " GPU(s) visible"));
    } else if (!d.is_cpu()) {
      return absl::InvalidArgumentError(StrCat("device ", name, ": only cpu and cuda devices are supported"));
    }
  }
  if (out.empty()) return absl::InvalidArgumentError("empty device list");
  return out;
}

}  // namespace fm
