#include "worker/engine/tokenizer/post_processor.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "worker/engine/common/status_macros.h"

namespace fm::tokenizer_internal {

absl::StatusOr<PostProcessor> PostProcessor::FromJson(const Json& root, const JsonPath& path) {
  PostProcessor pp;
  if (const Json* value = FindField(root, "post_processor")) {
    FM_RETURN_IF_ERROR(FlattenProcessor(*value, path.Child("post_processor"), 0, &pp.templates_));
  }
  if (const Json* t = FindField(root, "truncation")) {
    const JsonPath tp = path.Child("truncation");
    if (!t->is_object()) return tp.Invalid("expected an object or null");
    Truncation trunc;
    FM_ASSIGN_OR_RETURN(int64_t max_length, GetInt(*t, "max_length", tp, 0, INT32_MAX));
    trunc.max_length = static_cast<size_t>(max_length);
    FM_ASSIGN_OR_RETURN(std::string direction, GetString(*t, "direction", tp));
    if (direction != "Left" && direction != "Right") return tp.Child("direction").Invalid("expected Left or Right");
    trunc.left = direction == "Left";
    FM_ASSIGN_OR_RETURN(std::string strategy, GetString(*t, "strategy", tp));
    if (strategy == "OnlySecond") {
      return tp.Child("strategy").Unimplemented("OnlySecond truncation cannot apply to a single sequence");
    }
    if (strategy != "LongestFirst" && strategy != "OnlyFirst") {
      return tp.Child("strategy").Invalid("expected LongestFirst, OnlyFirst or OnlySecond");
    }
    pp.truncation_ = trunc;
  }
  if (const Json* p = FindField(root, "padding")) {
    const JsonPath ppath = path.Child("padding");
    if (!p->is_object()) return ppath.Invalid("expected an object or null");
    Padding pad;
    FM_ASSIGN_OR_RETURN(const Json* strategy, RequireField(*p, "strategy", ppath));
    if (strategy->is_string() && strategy->get<std::string>() == "BatchLongest") {
      pad.fixed_length.reset();
    } else if (const Json* fixed = FindField(*strategy, "Fixed")) {
      FM_ASSIGN_OR_RETURN(int64_t n, AsInt(*fixed, ppath.Child("strategy").Child("Fixed"), 0, INT32_MAX));
      pad.fixed_length = static_cast<size_t>(n);
    } else {
      return ppath.Child("strategy").Invalid("expected \"BatchLongest\" or {\"Fixed\": n}");
    }
    FM_ASSIGN_OR_RETURN(std::string direction, GetString(*p, "direction", ppath));
    if (direction != "Left" && direction != "Right") {
      return ppath.Child("direction").Invalid("expected Left or Right");
    }
    pad.left = direction == "Left";
    if (FindField(*p, "pad_to_multiple_of") != nullptr) {
      FM_ASSIGN_OR_RETURN(int64_t m, GetInt(*p, "pad_to_multiple_of", ppath, 0, INT32_MAX));
      pad.multiple_of = static_cast<size_t>(m);
    }
    FM_ASSIGN_OR_RETURN(int64_t pad_id, GetInt(*p, "pad_id", ppath, 0, INT32_MAX));
    pad.pad_id = static_cast<int32_t>(pad_id);
    pp.padding_ = pad;
  }
  return pp;
}

absl::Status PostProcessor::FlattenProcessor(const Json& value, const JsonPath& path, int depth,
                                             std::vector<Template>* templates) {
  if (depth > kMaxJsonNesting) return path.Invalid("Sequence nested too deeply");
  FM_ASSIGN_OR_RETURN(std::string type, GetType(value, path));
  if (type == "ByteLevel") return absl::OkStatus();  // only trims offsets
  if (type == "TemplateProcessing") {
    FM_ASSIGN_OR_RETURN(Template t, ParseTemplate(value, path));
    templates->push_back(std::move(t));
    return absl::OkStatus();
  }
  if (type == "Sequence") {
    FM_ASSIGN_OR_RETURN(const Json* list, RequireField(value, "processors", path));
    const JsonPath list_path = path.Child("processors");
    if (!list->is_array()) return list_path.Invalid("expected an array");
    for (size_t i = 0; i < list->size(); ++i) {
      FM_RETURN_IF_ERROR(FlattenProcessor((*list)[i], list_path.Index(i), depth + 1, templates));
    }
    return absl::OkStatus();
  }
  return path.Unimplemented(absl::StrCat("post_processor type \"", type,
                                         "\" is not supported (supported: ByteLevel, TemplateProcessing, "
                                         "Sequence)"));
}

absl::StatusOr<PostProcessor::Template> PostProcessor::ParseTemplate(const Json& value, const JsonPath& path) {
  FM_ASSIGN_OR_RETURN(const Json* single, RequireField(value, "single", path));
  FM_ASSIGN_OR_RETURN(const Json* specials, RequireField(value, "special_tokens", path));
  const JsonPath single_path = path.Child("single");
  const JsonPath specials_path = path.Child("special_tokens");
  if (!single->is_array()) return single_path.Invalid("expected an array");
  if (!specials->is_object()) return specials_path.Invalid("expected an object");
  Template t;
  for (size_t i = 0; i < single->size(); ++i) {
    const Json& item = (*single)[i];
    const JsonPath item_path = single_path.Index(i);
    TemplatePiece piece;
    if (const Json* seq = FindField(item, "Sequence")) {
      FM_ASSIGN_OR_RETURN(std::string id, GetString(*seq, "id", item_path.Child("Sequence")));
      if (id != "A") return item_path.Invalid(absl::StrCat("the single template refers to sequence $", id));
      piece.is_sequence = true;
    } else if (const Json* special = FindField(item, "SpecialToken")) {
      FM_ASSIGN_OR_RETURN(piece.name, GetString(*special, "id", item_path.Child("SpecialToken")));
      const Json* entry = FindField(*specials, piece.name);
      if (entry == nullptr) {
        return specials_path.Invalid(absl::StrCat("no entry for special token \"", piece.name, "\""));
      }
      const JsonPath entry_path = specials_path.Child(piece.name);
      FM_ASSIGN_OR_RETURN(const Json* ids, RequireField(*entry, "ids", entry_path));
      if (!ids->is_array()) return entry_path.Child("ids").Invalid("expected an array");
      for (size_t k = 0; k < ids->size(); ++k) {
        FM_ASSIGN_OR_RETURN(int64_t id, AsInt((*ids)[k], entry_path.Child("ids").Index(k), 0, INT32_MAX));
        piece.ids.push_back(static_cast<int32_t>(id));
      }
    } else {
      return item_path.Invalid("expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
    t.push_back(std::move(piece));
  }
  return t;
}

size_t PostProcessor::AddedTokens() const {
  size_t n = 0;
  for (const Template& t : templates_) {
    for (const TemplatePiece& p : t) n += p.ids.size();
  }
  return n;
}

void PostProcessor::Apply(std::vector<int32_t>* ids, bool add_special_tokens) const {
  if (truncation_) {
    size_t max_length = truncation_->max_length;
    const size_t added = AddedTokens();
    if (add_special_tokens && added > 0) max_length = max_length > added ? max_length - added : 0;
    if (ids->size() > max_length) {
      if (truncation_->left) {
        ids->erase(ids->begin(), ids->end() - static_cast<std::ptrdiff_t>(max_length));
      } else {
        ids->resize(max_length);
      }
    }
  }
  for (const Template& t : templates_) {
    std::vector<int32_t> out;
    out.reserve(ids->size() + 4);
    for (const TemplatePiece& p : t) {
      if (p.is_sequence) {
        out.insert(out.end(), ids->begin(), ids->end());
      } else if (add_special_tokens) {
        out.insert(out.end(), p.ids.begin(), p.ids.end());
      }
    }
    ids->swap(out);
  }
  if (padding_) {
    size_t target = padding_->fixed_length.value_or(ids->size());
    if (padding_->multiple_of && *padding_->multiple_of > 0 && target % *padding_->multiple_of > 0) {
      target += *padding_->multiple_of - target % *padding_->multiple_of;
    }
    if (ids->size() < target) {
      const size_t n = target - ids->size();
      ids->insert(padding_->left ? ids->begin() : ids->end(), n, padding_->pad_id);
    }
  }
}

std::optional<int32_t> PostProcessor::TemplateBos() const {
  if (templates_.empty()) return std::nullopt;
  for (const TemplatePiece& p : templates_.front()) {
    if (p.is_sequence) return std::nullopt;
    if (!p.ids.empty()) return p.ids.front();
  }
  return std::nullopt;
}

std::optional<int32_t> PostProcessor::TemplateEos() const {
  if (templates_.empty()) return std::nullopt;
  const Template& t = templates_.front();
  for (auto it = t.rbegin(); it != t.rend(); ++it) {
    if (it->is_sequence) return std::nullopt;
    if (!it->ids.empty()) return it->ids.back();
  }
  return std::nullopt;
}

}  // namespace fm::tokenizer_internal
