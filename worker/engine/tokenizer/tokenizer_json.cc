// Builds TokenizerParts from the text of a tokenizer.json.
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/absl_compat.h"
#include "worker/engine/tokenizer/tokenizer_parts.h"

namespace fm::tokenizer_internal {
namespace {

absl::Status ParseModel(const Json& root, const JsonPath& root_path, const Normalizer& normalizer,
                        TokenizerParts* parts) {
  FM_ASSIGN_OR_RETURN(const Json* model, RequireField(root, "model", root_path));
  const JsonPath path = root_path.Child("model");
  if (!model->is_object()) return path.Invalid("expected an object");
  if (const Json* type = FindField(*model, "type")) {
    FM_ASSIGN_OR_RETURN(std::string name, AsString(*type, path.Child("type")));
    if (name != "BPE") {
      return path.Child("type").Unimplemented(
          absl::StrCat("model type \"", name, "\" is not supported (only byte-level BPE models are)"));
    }
  }
  if (const Json* dropout = FindField(*model, "dropout")) {
    if (!dropout->is_number()) return path.Child("dropout").Invalid("expected a number or null");
    const double p = dropout->get<double>();
    if (!(p >= 0.0 && p <= 1.0)) return path.Child("dropout").Invalid("must lie in [0, 1]");
    if (p != 0.0) return path.Child("dropout").Unimplemented("BPE dropout is not supported (must be null)");
  }

  BpeModel::Options options;
  FM_ASSIGN_OR_RETURN(options.unk_token, GetOptionalString(*model, "unk_token", path));
  FM_ASSIGN_OR_RETURN(options.continuing_subword_prefix, GetOptionalString(*model, "continuing_subword_prefix", path));
  FM_ASSIGN_OR_RETURN(options.end_of_word_suffix, GetOptionalString(*model, "end_of_word_suffix", path));
  FM_ASSIGN_OR_RETURN(options.fuse_unk, GetBool(*model, "fuse_unk", path, false));
  FM_ASSIGN_OR_RETURN(options.byte_fallback, GetBool(*model, "byte_fallback", path, false));
  FM_ASSIGN_OR_RETURN(options.ignore_merges, GetBool(*model, "ignore_merges", path, false));

  FM_ASSIGN_OR_RETURN(const Json* vocab_json, RequireField(*model, "vocab", path));
  const JsonPath vocab_path = path.Child("vocab");
  if (!vocab_json->is_object()) return vocab_path.Invalid("expected an object mapping tokens to ids");
  std::vector<std::pair<std::string, int32_t>> vocab;
  vocab.reserve(vocab_json->size());
  for (auto it = vocab_json->begin(); it != vocab_json->end(); ++it) {
    FM_ASSIGN_OR_RETURN(int64_t id, AsInt(it.value(), vocab_path.Child(it.key()), 0, INT32_MAX - 1));
    vocab.emplace_back(it.key(), static_cast<int32_t>(id));
  }

  FM_ASSIGN_OR_RETURN(const Json* merges_json, RequireField(*model, "merges", path));
  const JsonPath merges_path = path.Child("merges");
  if (!merges_json->is_array()) return merges_path.Invalid("expected an array");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(merges_json->size());
  for (size_t i = 0; i < merges_json->size(); ++i) {
    const Json& m = (*merges_json)[i];
    const JsonPath mp = merges_path.Index(i);
    if (m.is_string()) {
      const std::string& line = m.get_ref<const std::string&>();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        return mp.Invalid(absl::StrCat("merge \"", line, "\" is not two tokens separated by one space"));
      }
      merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return mp.Invalid("expected \"a b\" or [\"a\", \"b\"]");
    }
  }
  FM_ASSIGN_OR_RETURN(parts->model, BpeModel::Create(std::move(vocab), merges, std::move(options), path.source()));

  std::vector<AddedTokenSpec> added;
  if (const Json* list = FindField(root, "added_tokens")) {
    const JsonPath lp = root_path.Child("added_tokens");
    if (!list->is_array()) return lp.Invalid("expected an array");
    for (size_t i = 0; i < list->size(); ++i) {
      const Json& t = (*list)[i];
      const JsonPath tp = lp.Index(i);
      if (!t.is_object()) return tp.Invalid("expected an object");
      AddedTokenSpec spec;
      FM_RETURN_IF_ERROR(GetInt(t, "id", tp, 0, UINT32_MAX).status());  // ids are reassigned as tokenizers does
      FM_ASSIGN_OR_RETURN(spec.content, GetString(t, "content", tp));
      FM_ASSIGN_OR_RETURN(spec.single_word, GetBool(t, "single_word", tp));
      FM_ASSIGN_OR_RETURN(spec.lstrip, GetBool(t, "lstrip", tp));
      FM_ASSIGN_OR_RETURN(spec.rstrip, GetBool(t, "rstrip", tp));
      FM_ASSIGN_OR_RETURN(spec.normalized, GetBool(t, "normalized", tp));
      FM_ASSIGN_OR_RETURN(spec.special, GetBool(t, "special", tp));
      added.push_back(std::move(spec));
    }
  }
  FM_ASSIGN_OR_RETURN(parts->added, AddedVocabulary::Create(added, *parts->model, normalizer));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenizerParts>> PartsFromJson(std::string_view json, std::string_view source) {
  const Json root = Json::parse(json.begin(), json.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  const JsonPath root_path(std::string(source), "");
  if (root.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(Sv(source), ": not valid JSON"));
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(Sv(source), ": expected a JSON object"));
  if (const Json* version = FindField(root, "version")) {
    FM_ASSIGN_OR_RETURN(std::string v, AsString(*version, root_path.Child("version")));
    if (v != "1.0") return root_path.Child("version").Unimplemented(absl::StrCat("unknown version \"", v, "\""));
  }

  auto parts = std::make_unique<TokenizerParts>();
  static const Json kNull;
  const Json* normalizer = FindField(root, "normalizer");
  FM_ASSIGN_OR_RETURN(parts->normalizer,
                      Normalizer::FromJson(normalizer ? *normalizer : kNull, root_path.Child("normalizer")));
  const Json* pre = FindField(root, "pre_tokenizer");
  FM_ASSIGN_OR_RETURN(parts->pre_tokenizer,
                      PreTokenizer::FromJson(pre ? *pre : kNull, root_path.Child("pre_tokenizer")));
  const Json* decoder = FindField(root, "decoder");
  FM_ASSIGN_OR_RETURN(parts->decoder, Decoder::FromJson(decoder ? *decoder : kNull, root_path.Child("decoder")));
  FM_ASSIGN_OR_RETURN(parts->post_processor, PostProcessor::FromJson(root, root_path));
  FM_RETURN_IF_ERROR(ParseModel(root, root_path, parts->normalizer, parts.get()));
  return parts;
}

}  // namespace fm::tokenizer_internal
