// Dequantisation of GGUF tensors to float32. Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
// Q4_K, Q5_K, Q6_K, with the block layouts of the GGUF format (written out in gguf_dequant.cc). The results are
// bit-identical to gguf-py's gguf.quants.dequantize: each value comes from the same float32 operations in the same
// order, one rounding per multiply and per add (gguf_dequant.cc is compiled with -ffp-contract=off, so no fused
// multiply-add can change a rounding). Whole tensors or row ranges, into a caller buffer or a new vector, optionally
// split by rows over threads (the output does not depend on the thread count). Other types are UNIMPLEMENTED.
// Errors name the file and the tensor.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/engine/gguf/ggml_type.h"
#include "worker/engine/gguf/gguf_file.h"

namespace fm {

// Whether the functions below can decode `type`.
bool CanDequantize(GgmlType type);

// Decodes whole blocks: `src` holds n blocks of `type` (n * type_size bytes) and `dst` receives their
// n * block_size values. INVALID_ARGUMENT if the sizes disagree, UNIMPLEMENTED for an unsupported type.
absl::Status DequantizeBlocks(GgmlType type, absl::Span<const uint8_t> src, absl::Span<float> dst);

struct DequantOptions {
  // Threads to split the rows over; 0 means std::thread::hardware_concurrency(). Small jobs use fewer.
  int num_threads = 1;
};

// Decodes rows [first_row, first_row + num_rows) of `tensor` (a tensor of `file`; a row is dims[0] values and
// rows are numbered in storage order) into `out`, which must hold exactly num_rows * dims[0] floats.
absl::Status DequantizeRows(const GgufFile& file, const GgufTensorInfo& tensor, uint64_t first_row, uint64_t num_rows,
                            absl::Span<float> out, const DequantOptions& options = {});
// The whole tensor into `out` (exactly num_elements floats), in storage order (row-major over reversed dims).
absl::Status DequantizeTensor(const GgufFile& file, const GgufTensorInfo& tensor, absl::Span<float> out,
                              const DequantOptions& options = {});
// The whole tensor as a new vector.
absl::StatusOr<std::vector<float>> DequantizeToVector(const GgufFile& file, const GgufTensorInfo& tensor,
                                                      const DequantOptions& options = {});

// IEEE binary16 and bfloat16 bit patterns to float32 (exact, including subnormals, infinities and NaN payloads).
float HalfToFloat(uint16_t bits);
float BFloat16ToFloat(uint16_t bits);

}  // namespace fm
