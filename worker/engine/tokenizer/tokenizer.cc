#include "worker/engine/tokenizer/tokenizer.h"
#include "worker/engine/common/absl_compat.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>

#include "absl/strings/str_cat.h"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/tokenizer/byte_level.h"
#include "worker/engine/tokenizer/tokenizer_parts.h"
#include "worker/engine/common/utf8.h"

namespace fm {

using tokenizer_internal::AddedVocabulary;
using tokenizer_internal::TokenizerParts;

namespace {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::string data;
  data.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::read(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return absl::DataLossError(absl::StrCat(path, ": read failed after ", done, " bytes"));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return data;
}

std::optional<int32_t> SpecialByName(const AddedVocabulary& added, std::initializer_list<std::string_view> names) {
  for (std::string_view name : names) {
    auto id = added.TokenToId(name);
    if (id && added.IsSpecialContent(name)) return id;
  }
  return std::nullopt;
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<TokenizerParts> parts) : parts_(std::move(parts)) {
  if (!parts_->explicit_bos_eos) {
    parts_->bos_id = parts_->post_processor.TemplateBos();
    if (!parts_->bos_id) {
      parts_->bos_id = SpecialByName(*parts_->added, {"<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"});
    }
    parts_->eos_id = parts_->post_processor.TemplateEos();
    if (!parts_->eos_id) {
      parts_->eos_id = SpecialByName(*parts_->added, {"<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"});
    }
  }
}

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJsonFile(const std::string& path) {
  FM_ASSIGN_OR_RETURN(std::string json, ReadWholeFile(path));
  return FromJsonString(json, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJsonString(std::string_view json,
                                                                     std::string_view source_name) {
  try {
    FM_ASSIGN_OR_RETURN(std::unique_ptr<TokenizerParts> parts, tokenizer_internal::PartsFromJson(json, source_name));
    return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(parts)));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat(Sv(source_name), ": unexpected failure while loading: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromBpeSpec(const BpeSpec& spec) {
  try {
    FM_ASSIGN_OR_RETURN(std::unique_ptr<TokenizerParts> parts, tokenizer_internal::PartsFromBpeSpec(spec));
    return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(parts)));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(spec.source_name, ": unexpected failure while loading: ", e.what()));
  }
}

void Tokenizer::EncodeValidText(std::string_view text, std::vector<int32_t>* ids) const {
  const TokenizerParts& p = *parts_;
  std::vector<AddedVocabulary::Piece> raw_pieces;
  p.added->Extract(text, /*normalized_kind=*/false, &raw_pieces);
  std::vector<AddedVocabulary::Piece> pieces;
  std::vector<std::string> words;
  for (const AddedVocabulary::Piece& raw : raw_pieces) {
    if (raw.token_id >= 0) {
      ids->push_back(raw.token_id);
      continue;
    }
    pieces.clear();
    if (p.normalizer.present()) {
      p.added->Extract(p.normalizer.Apply(raw.text), /*normalized_kind=*/true, &pieces);
    } else {
      p.added->Extract(raw.text, /*normalized_kind=*/true, &pieces);
    }
    for (const AddedVocabulary::Piece& piece : pieces) {
      if (piece.token_id >= 0) {
        ids->push_back(piece.token_id);
        continue;
      }
      words.clear();
      p.pre_tokenizer.Apply(piece.text, &words);
      for (const std::string& w : words) p.model->Tokenize(w, ids);
    }
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  try {
    ids.reserve(text.size() / 3 + 4);
    const bool byte_level = parts_->pre_tokenizer.has_byte_level();
    size_t pos = 0;
    while (pos < text.size()) {
      // The longest valid run from pos.
      size_t end = pos;
      char32_t cp;
      while (end < text.size()) {
        if (static_cast<uint8_t>(text[end]) < 0x80) {
          ++end;
          continue;
        }
        const size_t n = DecodeUtf8(text, end, &cp);
        if (n == 0) break;
        end += n;
      }
      if (end > pos) {
        EncodeValidText(text.substr(pos, end - pos), &ids);
        pos = end;
        continue;
      }
      // The longest invalid run from pos.
      while (end < text.size() && DecodeUtf8(text, end, &cp) == 0) {
        end += InvalidUtf8Length(text, end);
      }
      const std::string_view invalid = text.substr(pos, end - pos);
      if (byte_level) {
        std::string word;
        tokenizer_internal::AppendByteLevel(invalid, &word);
        parts_->model->Tokenize(word, &ids);
      } else {
        EncodeValidText(Utf8Lossy(invalid), &ids);
      }
      pos = end;
    }
    parts_->post_processor.Apply(&ids, add_special_tokens);
  } catch (const std::exception&) {  // only allocation failure can get here
    ids.clear();
  }
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  return DecodeImpl(ids, skip_special_tokens, /*lossy=*/true);
}

std::string Tokenizer::DecodeBytes(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  return DecodeImpl(ids, skip_special_tokens, /*lossy=*/false);
}

std::string Tokenizer::DecodeImpl(absl::Span<const int32_t> ids, bool skip_special_tokens, bool lossy) const {
  try {
    std::vector<std::string_view> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      const std::string* token = parts_->added->DecodeForm(id);
      if (token == nullptr) token = parts_->model->IdToToken(id);
      if (token == nullptr) continue;
      if (skip_special_tokens && parts_->added->IsSpecialContent(*token)) continue;
      tokens.push_back(*token);
    }
    return parts_->decoder.Decode(tokens, lossy);
  } catch (const std::exception&) {  // only allocation failure can get here
    return std::string();
  }
}

int32_t Tokenizer::vocab_size() const { return std::max(parts_->model->id_limit(), parts_->added->id_limit()); }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (auto id = parts_->added->TokenToId(token)) return id;
  return parts_->model->TokenToId(token);
}

std::optional<std::string_view> Tokenizer::IdToToken(int32_t id) const {
  if (const std::string* added = parts_->added->DecodeForm(id)) return std::string_view(*added);
  if (const std::string* token = parts_->model->IdToToken(id)) return std::string_view(*token);
  return std::nullopt;
}

std::optional<int32_t> Tokenizer::bos_id() const { return parts_->bos_id; }
std::optional<int32_t> Tokenizer::eos_id() const { return parts_->eos_id; }

bool Tokenizer::IsSpecial(int32_t id) const {
  const auto* added = parts_->added->Find(id);
  return added != nullptr && added->special;
}

std::vector<AddedTokenInfo> Tokenizer::added_tokens() const {
  std::vector<AddedTokenInfo> out;
  for (const auto& [id, token] : parts_->added->Sorted()) out.push_back({id, token->content, token->special});
  return out;
}

}  // namespace fm
