#include "worker/engine/data/text_dataset.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

#include "nlohmann/json.hpp"
#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/data/brown_corpus.h"
#include "worker/engine/data/rng.h"
#include "worker/engine/formats/json_strict.h"
#include "worker/engine/formats/mapped_file.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace fm {
namespace {

constexpr int kHeldOutModulus = 10;
constexpr int kHeldOutRemainder = 9;
constexpr size_t kBatchBytes = size_t{64} << 20;  // documents tokenized together (bounds memory for big JSONL)
constexpr int kJsonMaxDepth = 128;

int ResolveThreads(int num_threads) {
  if (num_threads > 0) return num_threads;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Tokenizes documents in order-preserving batches and appends them to the two splits, EOS between documents.
class StreamBuilder {
 public:
  StreamBuilder(const Tokenizer& tokenizer, int num_threads, std::vector<int32_t>* train, int64_t* train_docs,
                std::vector<int32_t>* held_out, int64_t* held_out_docs)
      : tokenizer_(tokenizer),
        eos_(tokenizer.eos_id()),
        num_threads_(ResolveThreads(num_threads)),
        out_{train, held_out},
        docs_{train_docs, held_out_docs} {}

  void Add(std::string doc) {
    batch_bytes_ += doc.size();
    batch_.push_back(std::move(doc));
    if (batch_bytes_ >= kBatchBytes) Flush();
  }

  void Flush() {
    std::vector<std::vector<int32_t>> ids(batch_.size());
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t i = next++; i < batch_.size(); i = next++) ids[i] = tokenizer_.Encode(batch_[i], false);
    };
    const int threads = static_cast<int>(std::min<size_t>(num_threads_, batch_.size()));
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
    for (std::thread& t : pool) t.join();
    for (size_t i = 0; i < ids.size(); ++i) {
      const int which = (doc_index_++ % kHeldOutModulus == kHeldOutRemainder) ? 1 : 0;
      std::vector<int32_t>& out = *out_[which];
      if (*docs_[which] > 0 && eos_.has_value()) out.push_back(*eos_);
      out.insert(out.end(), ids[i].begin(), ids[i].end());
      ++*docs_[which];
    }
    batch_.clear();
    batch_bytes_ = 0;
  }

 private:
  const Tokenizer& tokenizer_;
  const std::optional<int32_t> eos_;
  const int num_threads_;
  std::vector<int32_t>* out_[2];
  int64_t* docs_[2];
  std::vector<std::string> batch_;
  size_t batch_bytes_ = 0;
  int64_t doc_index_ = 0;
};

bool IsBlankLine(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

std::string Extension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

}  // namespace

const char* DataSplitName(DataSplit split) { return split == DataSplit::kTrain ? "train" : "held-out"; }

absl::StatusOr<TextDataset> TextDataset::Open(const TextSourceOptions& options, const Tokenizer& tokenizer) {
  if (options.path.empty()) {
    if (options.token_bytes != 0) {
      return absl::InvalidArgumentError("token_bytes applies to token files only, not to the Brown Corpus");
    }
    return FromBrownCorpus(DefaultBrownCorpusDir(), tokenizer, options.num_threads);
  }
  const std::string ext = Extension(options.path);
  if (ext == ".jsonl") {
    if (options.token_bytes != 0) {
      return absl::InvalidArgumentError(
          StrCat("token_bytes applies to token files only, not to the JSONL file '", options.path, "'"));
    }
    return FromJsonl(options.path, tokenizer, options.num_threads);
  }
  if (ext == ".u16" || ext == ".u32" || ext == ".bin") {
    int width = options.token_bytes;
    const int implied = ext == ".u16" ? 2 : ext == ".u32" ? 4 : 0;
    if (width == 0 && implied == 0) {
      return absl::InvalidArgumentError(
          StrCat("token file '", options.path, "': a .bin file needs token_bytes (2 for uint16, 4 for uint32)"));
    }
    if (width == 0) width = implied;
    if (implied != 0 && width != implied) {
      return absl::InvalidArgumentError(StrCat("token file '", options.path, "': token_bytes ", width,
                                               " contradicts the extension ", ext, " (", implied, " bytes)"));
    }
    return FromTokenFile(options.path, width, tokenizer.vocab_size());
  }
  return absl::InvalidArgumentError(StrCat("text source '", options.path,
                                           "': unknown extension (want .jsonl, .u16, .u32 or .bin, or no path "
                                           "for the Brown Corpus)"));
}

TextDataset TextDataset::FromDocuments(const std::vector<std::string>& documents, const Tokenizer& tokenizer,
                                       int num_threads, std::string source_name) {
  TextDataset ds;
  ds.source_name_ = std::move(source_name);
  StreamBuilder builder(tokenizer, num_threads, &ds.train_.ids, &ds.train_.documents, &ds.held_out_.ids,
                        &ds.held_out_.documents);
  for (const std::string& doc : documents) builder.Add(doc);
  builder.Flush();
  ds.train_.count = static_cast<int64_t>(ds.train_.ids.size());
  ds.held_out_.count = static_cast<int64_t>(ds.held_out_.ids.size());
  return ds;
}

absl::StatusOr<TextDataset> TextDataset::FromBrownCorpus(const std::string& dir, const Tokenizer& tokenizer,
                                                         int num_threads) {
  FM_ASSIGN_OR_RETURN(std::vector<std::string> docs, ReadBrownCorpus(dir));
  return FromDocuments(docs, tokenizer, num_threads, StrCat("Brown Corpus at '", dir, "'"));
}

absl::StatusOr<TextDataset> TextDataset::FromJsonl(const std::string& path, const Tokenizer& tokenizer,
                                                   int num_threads) {
  FM_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::Open(path));
  const std::string_view text(reinterpret_cast<const char*>(file->data()), file->size());
  TextDataset ds;
  ds.source_name_ = path;
  StreamBuilder builder(tokenizer, num_threads, &ds.train_.ids, &ds.train_.documents, &ds.held_out_.ids,
                        &ds.held_out_.documents);
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (IsBlankLine(line)) continue;
    const std::string where = StrCat(path, ":", line_no);
    auto json = ParseStrictJson(line, kJsonMaxDepth);
    if (!json.ok()) {
      return absl::InvalidArgumentError(StrCat(where, ": invalid JSON: ", std::string(json.status().message())));
    }
    if (!json->is_object()) {
      return absl::InvalidArgumentError(
          StrCat(where, ": expected a JSON object with a \"text\" field, got ", json->type_name()));
    }
    auto it = json->find("text");
    if (it == json->end()) return absl::InvalidArgumentError(StrCat(where, ": no \"text\" field"));
    if (!it->is_string()) {
      return absl::InvalidArgumentError(StrCat(where, ": \"text\" is ", it->type_name(), ", not a string"));
    }
    builder.Add(it->get<std::string>());
  }
  builder.Flush();
  ds.train_.count = static_cast<int64_t>(ds.train_.ids.size());
  ds.held_out_.count = static_cast<int64_t>(ds.held_out_.ids.size());
  return ds;
}

absl::StatusOr<TextDataset> TextDataset::FromTokenFile(const std::string& path, int token_bytes, int32_t vocab_size) {
  if (token_bytes != 2 && token_bytes != 4) {
    return absl::InvalidArgumentError(
        StrCat("token file '", path, "': token_bytes must be 2 (uint16) or 4 (uint32), not ", token_bytes));
  }
  if (vocab_size <= 0) {
    return absl::InvalidArgumentError(StrCat("token file '", path, "': vocabulary size ", vocab_size));
  }
  FM_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::Open(path));
  if (file->size() % token_bytes != 0) {
    return absl::InvalidArgumentError(StrCat("token file '", path, "': size ", file->size(),
                                             " bytes is not a multiple of the token width ", token_bytes));
  }
  TextDataset ds;
  ds.source_name_ = path;
  ds.file_ = file;
  const int64_t n = static_cast<int64_t>(file->size() / token_bytes);
  const int64_t held = n / kHeldOutModulus;
  ds.train_ = Part{{}, file->data(), token_bytes, n - held, 0};
  ds.held_out_ = Part{{}, file->data() + (n - held) * token_bytes, token_bytes, held, 0};
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = i < n - held ? ds.token(DataSplit::kTrain, i) : ds.token(DataSplit::kHeldOut, i - (n - held));
    if (id < 0 || id >= vocab_size) {
      const uint32_t raw = static_cast<uint32_t>(id);
      return absl::InvalidArgumentError(StrCat("token file '", path, "': token ", i, " (byte offset ", i * token_bytes,
                                               ") is id ", raw, ", not below the vocabulary size ", vocab_size));
    }
  }
  return ds;
}

int64_t TextDataset::size(DataSplit split) const { return part(split).count; }

int64_t TextDataset::num_documents(DataSplit split) const { return part(split).documents; }

int32_t TextDataset::token(DataSplit split, int64_t i) const {
  const Part& p = part(split);
  if (p.bytes == nullptr) return p.ids[i];
  const uint8_t* b = p.bytes + i * p.width;
  if (p.width == 2) return static_cast<int32_t>(b[0] | (uint32_t{b[1]} << 8));
  return static_cast<int32_t>(b[0] | (uint32_t{b[1]} << 8) | (uint32_t{b[2]} << 16) | (uint32_t{b[3]} << 24));
}

absl::StatusOr<std::vector<int32_t>> TextDataset::Slice(DataSplit split, int64_t begin, int64_t length) const {
  const int64_t n = size(split);
  if (begin < 0 || length < 0 || begin > n || length > n - begin) {
    return absl::InvalidArgumentError(StrCat(source_name_, ": tokens [", begin, ", ", begin, " + ", length,
                                             ") are outside the ", DataSplitName(split), " split of ", n, " tokens"));
  }
  const Part& p = part(split);
  if (p.bytes == nullptr) return std::vector<int32_t>(p.ids.begin() + begin, p.ids.begin() + begin + length);
  std::vector<int32_t> out(length);
  for (int64_t i = 0; i < length; ++i) out[i] = token(split, begin + i);
  return out;
}

absl::StatusOr<int64_t> TextDataset::WindowOffset(DataSplit split, int64_t index, int64_t length, uint64_t seed) const {
  const int64_t n = size(split);
  if (length < 1) return absl::InvalidArgumentError(StrCat("window length must be positive, not ", length));
  if (n < length) {
    return absl::InvalidArgumentError(StrCat(source_name_, ": the ", DataSplitName(split), " split has ", n,
                                             " tokens, fewer than the window length ", length));
  }
  Rng rng = Rng::ForStream(seed, static_cast<uint64_t>(index));
  return static_cast<int64_t>(rng.Uniform(static_cast<uint64_t>(n - length + 1)));
}

absl::StatusOr<std::vector<int32_t>> TextDataset::Window(DataSplit split, int64_t index, int64_t length,
                                                         uint64_t seed) const {
  FM_ASSIGN_OR_RETURN(int64_t offset, WindowOffset(split, index, length, seed));
  return Slice(split, offset, length);
}

}  // namespace fm
