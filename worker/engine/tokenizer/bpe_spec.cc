// Builds TokenizerParts from GGUF vocabulary data: each pre-tokenizer family becomes the pipeline of the
// tokenizer.json that family was converted from.
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/tokenizer/patterns.h"
#include "worker/engine/tokenizer/tokenizer_parts.h"

namespace fm::tokenizer_internal {
namespace {

constexpr int32_t kTypeControl = 3;
constexpr int32_t kTypeUserDefined = 4;

absl::Status BuildFamily(const BpeSpec& spec, TokenizerParts* parts, bool* ignore_merges) {
  const std::string& pre = spec.pre;
  std::vector<PreTokenizer::Step> steps;
  *ignore_merges = false;
  if (pre == "default" || pre == "gpt2") {
    FM_ASSIGN_OR_RETURN(PreTokenizer::Step byte_level, PreTokenizer::ByteLevel(false, true));
    steps.push_back(std::move(byte_level));
  } else if (pre == "smollm") {
    steps.push_back(PreTokenizer::Digits(/*individual_digits=*/true));
    FM_ASSIGN_OR_RETURN(PreTokenizer::Step byte_level, PreTokenizer::ByteLevel(false, true));
    steps.push_back(std::move(byte_level));
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "qwen2") {
    const bool qwen = pre == "qwen2";
    FM_ASSIGN_OR_RETURN(PreTokenizer::Step split,
                        PreTokenizer::SplitRegex(qwen ? kQwen2Pattern : kLlama3Pattern, SplitBehavior::kIsolated,
                                                 /*invert=*/false));
    steps.push_back(std::move(split));
    FM_ASSIGN_OR_RETURN(PreTokenizer::Step byte_level, PreTokenizer::ByteLevel(false, false));
    steps.push_back(std::move(byte_level));
    if (qwen) {
      parts->normalizer = Normalizer({Normalizer::Step::kNFC});
    } else {
      *ignore_merges = true;
    }
  } else {
    return absl::UnimplementedError(absl::StrCat(spec.source_name, ": pre-tokenizer family \"", pre,
                                                 "\" (tokenizer.ggml.pre) is not supported (supported: default, "
                                                 "gpt2, smollm, llama-bpe, llama3, qwen2)"));
  }
  parts->pre_tokenizer = PreTokenizer(std::move(steps));
  parts->decoder = Decoder(/*byte_level_steps=*/1);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenizerParts>> PartsFromBpeSpec(const BpeSpec& spec) {
  const std::string& src = spec.source_name;
  const size_t n = spec.tokens.size();
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat(src, ": the vocabulary is empty"));
  if (n > static_cast<size_t>(INT32_MAX - 1)) {
    return absl::InvalidArgumentError(absl::StrCat(src, ": too many tokens (", n, ")"));
  }
  if (!spec.token_types.empty() && spec.token_types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(src, ": ", spec.token_types.size(), " token types for ", n, " tokens"));
  }
  for (size_t i = 0; i < spec.token_types.size(); ++i) {
    if (spec.token_types[i] < 0 || spec.token_types[i] > 6) {
      return absl::InvalidArgumentError(
          absl::StrCat(src, ": token ", i, " has type ", spec.token_types[i], " (expected 0..6)"));
    }
  }
  for (const auto& [name, id] : {std::pair<const char*, std::optional<int32_t>>{"bos", spec.bos_id},
                                 std::pair<const char*, std::optional<int32_t>>{"eos", spec.eos_id}}) {
    if (id && (*id < 0 || static_cast<size_t>(*id) >= n)) {
      return absl::InvalidArgumentError(absl::StrCat(src, ": ", name, " id ", *id, " is outside the vocabulary"));
    }
  }
  if (spec.add_bos && !spec.bos_id) return absl::InvalidArgumentError(absl::StrCat(src, ": add_bos without bos id"));
  if (spec.add_eos && !spec.eos_id) return absl::InvalidArgumentError(absl::StrCat(src, ": add_eos without eos id"));

  auto parts = std::make_unique<TokenizerParts>();
  bool ignore_merges = false;
  FM_RETURN_IF_ERROR(BuildFamily(spec, parts.get(), &ignore_merges));

  // GGUF token lists may repeat a string; the first id keeps it (later copies stay decodable by id).
  std::vector<std::pair<std::string, int32_t>> vocab;
  vocab.reserve(n);
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(spec.merges.size());
  for (size_t i = n; i-- > 0;) vocab.emplace_back(spec.tokens[i], static_cast<int32_t>(i));
  for (size_t i = 0; i < spec.merges.size(); ++i) {
    const std::string& line = spec.merges[i];
    const size_t space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(src, ": merge ", i, " \"", line, "\" is not two tokens separated by one space"));
    }
    merges.emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  BpeModel::Options options;
  options.ignore_merges = ignore_merges;
  auto model = BpeModel::Create(std::move(vocab), merges, std::move(options), src);
  if (!model.ok()) return model.status();
  parts->model = *std::move(model);

  std::vector<AddedTokenSpec> added;
  for (size_t i = 0; i < spec.token_types.size(); ++i) {
    const int32_t type = spec.token_types[i];
    if (type != kTypeControl && type != kTypeUserDefined) continue;
    AddedTokenSpec t;
    t.content = spec.tokens[i];
    t.special = type == kTypeControl;
    t.normalized = false;
    added.push_back(std::move(t));
  }
  FM_ASSIGN_OR_RETURN(parts->added, AddedVocabulary::Create(added, *parts->model, parts->normalizer));

  PostProcessor::Template tmpl;
  if (spec.add_bos) tmpl.push_back({false, {*spec.bos_id}, "bos"});
  tmpl.push_back({true, {}, "A"});
  if (spec.add_eos) tmpl.push_back({false, {*spec.eos_id}, "eos"});
  if (spec.add_bos || spec.add_eos) parts->post_processor = PostProcessor({std::move(tmpl)});
  parts->bos_id = spec.bos_id;
  parts->eos_id = spec.eos_id;
  parts->explicit_bos_eos = true;
  return parts;
}

}  // namespace fm::tokenizer_internal
