#include "worker/engine/model/gguf_loader.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/gguf/gguf_dequant.h"
#include "worker/engine/model/gguf_model_spec.h"

namespace fm {
namespace {

// Hugging Face orders the rows of each Q/K head as [first half | second half] (rotate-half RoPE); llama.cpp's
// converter interleaves them as pairs (row i of the first half, row i of the second half). Undo: view the rows as
// [heads, head_dim/2, 2] and swap the last two row axes.
at::Tensor UnpermuteQk(const at::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0);
  std::vector<int64_t> shape = {heads, rows / heads / 2, 2};
  for (int64_t i = 1; i < w.dim(); ++i) shape.push_back(w.size(i));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes()).contiguous();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> LoadDecoderFromGguf(const std::string& path, const LoadOptions& options) {
  FM_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(path));
  FM_ASSIGN_OR_RETURN(ModelConfig c, ModelConfigFromGguf(file));
  FM_RETURN_IF_ERROR(ValidateGgufDecoder(c, file));
  const bool permuted = GgufQkPermuted(file);
  auto get = [&](const std::string& hf_name) -> absl::StatusOr<at::Tensor> {
    FM_ASSIGN_OR_RETURN(const GgufTensorInfo* t, file.GetTensor(GgufTensorName(hf_name)));
    std::vector<int64_t> shape(t->dims.rbegin(), t->dims.rend());
    at::Tensor out = at::empty(shape, at::kFloat);
    FM_RETURN_IF_ERROR(DequantizeTensor(file, *t, absl::Span<float>(out.data_ptr<float>(), out.numel()),
                                        DequantOptions{.num_threads = 0}));
    if (permuted && (hf_name.ends_with("q_proj.weight") || hf_name.ends_with("q_proj.bias")))
      out = UnpermuteQk(out, c.num_heads);
    if (permuted && (hf_name.ends_with("k_proj.weight") || hf_name.ends_with("k_proj.bias")))
      out = UnpermuteQk(out, c.num_kv_heads);
    return out.to(options.device, options.dtype);
  };
  try {
    FM_ASSIGN_OR_RETURN(DecoderWeights w, AssembleDecoderWeights(c, get));
    return std::make_unique<Decoder>(std::move(c), std::move(w));
  } catch (const c10::Error& e) {
    return absl::InternalError(StrCat(path, ": loading weights failed: ", e.what_without_backtrace()));
  }
}

}  // namespace fm
