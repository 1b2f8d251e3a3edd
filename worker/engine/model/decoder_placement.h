// Where a decoder's weights live when a job uses several devices: whole copies (replicas, for data parallelism) or
// contiguous layer shards (for layer-parallel calibration and for models that do not fit one device). A placement
// copies each tensor to its device; a tensor already there is shared, not copied, so placing a decoder on its own
// device costs nothing. Layer shards: the embeddings go with the first layer, the final norm and an untied LM head
// with the last one (Decoder::Forward moves activations between them).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model/decoder.h"

namespace fm {

// Contiguous, balanced split of `num_layers` layers over `parts` parts: entry l is the part of layer l (the first
// num_layers % parts parts get one layer more). INVALID_ARGUMENT unless 1 <= parts <= num_layers.
absl::StatusOr<std::vector<int64_t>> BalancedLayerSplit(int64_t num_layers, int64_t parts);

// A decoder with layer l on layer_devices[l] (one entry per layer). INVALID_ARGUMENT for a wrong count;
// INTERNAL when a copy fails (e.g. out of memory on a device).
absl::StatusOr<std::unique_ptr<Decoder>> PlaceDecoder(const Decoder& source,
                                                      const std::vector<at::Device>& layer_devices);

// The decoder whole on `device`.
absl::StatusOr<std::unique_ptr<Decoder>> ReplicateDecoder(const Decoder& source, const at::Device& device);

// Parses "cpu", "cuda", "cuda:1" or a comma-separated list of them ("cuda:0,cuda:1"); "cuda:all" (or "cuda:*") means
// every visible GPU. INVALID_ARGUMENT for text that is not a device; FAILED_PRECONDITION for CUDA without CUDA or
// an index past the visible GPUs.
absl::StatusOr<std::vector<at::Device>> ParseDeviceList(const std::string& text);

}  // namespace fm
