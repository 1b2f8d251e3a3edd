#include "worker/engine/tokenizer/normalizer.h"

#include "absl/strings/str_cat.h"
#include "worker/engine/common/status_macros.h"

namespace fm::tokenizer_internal {

absl::StatusOr<Normalizer> Normalizer::FromJson(const Json& value, const JsonPath& path) {
  if (value.is_null()) return Normalizer();
  std::vector<Step> steps;
  FM_RETURN_IF_ERROR(Flatten(value, path, 0, &steps));
  return Normalizer(std::move(steps));
}

absl::Status Normalizer::Flatten(const Json& value, const JsonPath& path, int depth, std::vector<Step>* steps) {
  if (depth > kMaxJsonNesting) return path.Invalid("Sequence nested too deeply");
  FM_ASSIGN_OR_RETURN(std::string type, GetType(value, path));
  if (type == "NFC") {
    steps->push_back(Step::kNFC);
  } else if (type == "NFD") {
    steps->push_back(Step::kNFD);
  } else if (type == "NFKC") {
    steps->push_back(Step::kNFKC);
  } else if (type == "NFKD") {
    steps->push_back(Step::kNFKD);
  } else if (type == "Lowercase") {
    steps->push_back(Step::kLowercase);
  } else if (type == "Sequence") {
    FM_ASSIGN_OR_RETURN(const Json* list, RequireField(value, "normalizers", path));
    const JsonPath list_path = path.Child("normalizers");
    if (!list->is_array()) return list_path.Invalid("expected an array");
    for (size_t i = 0; i < list->size(); ++i) {
      FM_RETURN_IF_ERROR(Flatten((*list)[i], list_path.Index(i), depth + 1, steps));
    }
  } else {
    return path.Unimplemented(absl::StrCat("normalizer type \"", type,
                                           "\" is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, "
                                           "Sequence)"));
  }
  return absl::OkStatus();
}

std::string Normalizer::Apply(std::string_view text) const {
  std::string s(text);
  for (Step step : steps_) {
    switch (step) {
      case Step::kNFC:
        s = ToNormalForm(s, NormalForm::kNFC);
        break;
      case Step::kNFD:
        s = ToNormalForm(s, NormalForm::kNFD);
        break;
      case Step::kNFKC:
        s = ToNormalForm(s, NormalForm::kNFKC);
        break;
      case Step::kNFKD:
        s = ToNormalForm(s, NormalForm::kNFKD);
        break;
      case Step::kLowercase:
        s = LowercaseChars(s);
        break;
    }
  }
  return s;
}

}  // namespace fm::tokenizer_internal
