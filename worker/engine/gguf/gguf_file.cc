#include "worker/engine/gguf/gguf_file.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/common/absl_compat.h"
#include "worker/engine/common/status_macros.h"

namespace fm {

static_assert(std::endian::native == std::endian::little, "GgufFile reads little-endian values in place");

namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;
constexpr std::string_view kAlignmentKey = "general.alignment";
// Smallest possible encodings, used to bound counts by the bytes left before allocating anything.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;                      // key length, value type, one-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;  // name length + 1 byte, n_dims, a dim, type, offset

// Size of one scalar of a fixed-size value type; 0 for STRING, ARRAY and unknown ids.
uint64_t ScalarSize(uint32_t type) {
  switch (static_cast<GgufValueType>(type)) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

bool IsKnownValueType(uint32_t type) { return type <= static_cast<uint32_t>(GgufValueType::kFloat64); }

bool IsInteger(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
      return true;
    default:
      return false;
  }
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// An integer element of an integer-typed value, widened: `negative` is set for negative signed values, and `bits`
// holds the value's two's complement in 64 bits.
struct WideInt {
  bool negative;
  uint64_t bits;
};

WideInt LoadInt(GgufValueType t, const uint8_t* p) {
  switch (t) {
    case GgufValueType::kUint8:
      return {false, Load<uint8_t>(p)};
    case GgufValueType::kInt8: {
      int64_t v = Load<int8_t>(p);
      return {v < 0, static_cast<uint64_t>(v)};
    }
    case GgufValueType::kUint16:
      return {false, Load<uint16_t>(p)};
    case GgufValueType::kInt16: {
      int64_t v = Load<int16_t>(p);
      return {v < 0, static_cast<uint64_t>(v)};
    }
    case GgufValueType::kUint32:
      return {false, Load<uint32_t>(p)};
    case GgufValueType::kInt32: {
      int64_t v = Load<int32_t>(p);
      return {v < 0, static_cast<uint64_t>(v)};
    }
    case GgufValueType::kUint64:
      return {false, Load<uint64_t>(p)};
    case GgufValueType::kInt64: {
      int64_t v = Load<int64_t>(p);
      return {v < 0, static_cast<uint64_t>(v)};
    }
    default:
      return {false, 0};
  }
}

std::string Quoted(std::string_view s) {
  // Names come from untrusted bytes: keep messages printable and bounded.
  std::string out = "'";
  size_t n = std::min<size_t>(s.size(), 200);
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    }
  }
  if (n < s.size()) out += "...";
  out += "'";
  return out;
}

}  // namespace

std::string GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
      return "UINT8";
    case GgufValueType::kInt8:
      return "INT8";
    case GgufValueType::kUint16:
      return "UINT16";
    case GgufValueType::kInt16:
      return "INT16";
    case GgufValueType::kUint32:
      return "UINT32";
    case GgufValueType::kInt32:
      return "INT32";
    case GgufValueType::kFloat32:
      return "FLOAT32";
    case GgufValueType::kBool:
      return "BOOL";
    case GgufValueType::kString:
      return "STRING";
    case GgufValueType::kArray:
      return "ARRAY";
    case GgufValueType::kUint64:
      return "UINT64";
    case GgufValueType::kInt64:
      return "INT64";
    case GgufValueType::kFloat64:
      return "FLOAT64";
  }
  return absl::StrCat("type ", static_cast<uint32_t>(type));
}

// Reads the file front to back with a bounds-checked cursor. Every failure names the file and the section,
// key or tensor being read.
class GgufParser {
 public:
  explicit GgufParser(std::shared_ptr<const MappedFile> file)
      : file_(std::move(file)), data_(file_->data()), size_(file_->size()) {}

  absl::StatusOr<GgufFile> Run() {
    auto state = std::make_shared<GgufFile::State>();
    state->file = file_;
    s_ = state.get();
    FM_RETURN_IF_ERROR(ReadHeader());
    FM_RETURN_IF_ERROR(ReadMetadata());
    FM_RETURN_IF_ERROR(ReadAlignment());
    FM_RETURN_IF_ERROR(ReadTensorInfos());
    FM_RETURN_IF_ERROR(CheckTensorData());
    return GgufFile(std::move(state));
  }

 private:
  uint64_t left() const { return size_ - pos_; }

  std::string Where(absl::string_view context) const { return absl::StrCat(file_->path(), ": ", context, ": "); }

  absl::Status Truncated(absl::string_view context, absl::string_view what, uint64_t need) const {
    return absl::DataLossError(absl::StrCat(Where(context), "truncated: ", what, " needs ", need, " bytes at offset ",
                                            pos_, " but the file has ", left(), " left"));
  }

  // Takes `n` bytes at the cursor.
  absl::StatusOr<const uint8_t*> Take(uint64_t n, absl::string_view context, absl::string_view what) {
    if (n > left()) return Truncated(context, what, n);
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }

  template <typename T>
  absl::StatusOr<T> Read(absl::string_view context, absl::string_view what) {
    FM_ASSIGN_OR_RETURN(const uint8_t* p, Take(sizeof(T), context, what));
    return Load<T>(p);
  }

  absl::StatusOr<std::string_view> ReadString(absl::string_view context, absl::string_view what) {
    FM_ASSIGN_OR_RETURN(uint64_t len, Read<uint64_t>(context, absl::StrCat(what, " length")));
    if (len > left()) {
      return absl::DataLossError(absl::StrCat(Where(context), what, " claims ", len, " bytes at offset ", pos_,
                                              " but the file has ", left(), " left"));
    }
    const char* p = reinterpret_cast<const char*>(data_ + pos_);
    pos_ += len;
    return std::string_view(p, len);
  }

  absl::Status ReadHeader() {
    constexpr absl::string_view kHeader = "header";
    FM_ASSIGN_OR_RETURN(const uint8_t* magic, Take(4, kHeader, "magic"));
    if (std::memcmp(magic, kMagic, 4) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(Where(kHeader), "not a GGUF file (magic ",
                                                     Quoted(std::string_view(reinterpret_cast<const char*>(magic), 4)),
                                                     ", expected 'GGUF')"));
    }
    FM_ASSIGN_OR_RETURN(uint32_t version, Read<uint32_t>(kHeader, "version"));
    if (version != 2 && version != 3) {
      uint32_t swapped = __builtin_bswap32(version);
      if (swapped >= 1 && swapped <= 3) {
        return absl::UnimplementedError(absl::StrCat(Where(kHeader), "big-endian GGUF file (version ", swapped,
                                                     "); only little-endian files are supported"));
      }
      if (version == 1) {
        return absl::UnimplementedError(
            absl::StrCat(Where(kHeader), "GGUF version 1 is not supported (only versions 2 and 3)"));
      }
      return absl::UnimplementedError(
          absl::StrCat(Where(kHeader), "unsupported GGUF version ", version, " (only versions 2 and 3)"));
    }
    s_->version = version;
    FM_ASSIGN_OR_RETURN(tensor_count_, Read<uint64_t>(kHeader, "tensor count"));
    FM_ASSIGN_OR_RETURN(kv_count_, Read<uint64_t>(kHeader, "metadata key/value count"));
    return absl::OkStatus();
  }

  absl::Status ReadMetadata() {
    if (kv_count_ > left() / kMinKvBytes) {
      return absl::DataLossError(
          absl::StrCat(Where("header"), "metadata count ", kv_count_, " cannot fit in the ", left(), " bytes left"));
    }
    s_->metadata.reserve(kv_count_);
    s_->key_index.reserve(kv_count_);
    for (uint64_t i = 0; i < kv_count_; ++i) {
      std::string context = absl::StrCat("metadata entry ", i);
      FM_ASSIGN_OR_RETURN(std::string_view key, ReadString(context, "key"));
      context = absl::StrCat("key ", Quoted(key));
      if (s_->key_index.contains(Sv(key))) {
        return absl::InvalidArgumentError(absl::StrCat(Where(context), "duplicate key"));
      }
      FM_ASSIGN_OR_RETURN(uint32_t type, Read<uint32_t>(context, "value type"));
      GgufKeyValue kv;
      kv.key = std::string(key);
      FM_RETURN_IF_ERROR(ReadValue(context, type, &kv.value));
      s_->key_index.emplace(kv.key, s_->metadata.size());
      s_->metadata.push_back(std::move(kv));
    }
    return absl::OkStatus();
  }

  absl::Status ReadValue(const std::string& context, uint32_t type, GgufValue* value) {
    if (!IsKnownValueType(type)) {
      return absl::InvalidArgumentError(absl::StrCat(Where(context), "unknown value type ", type));
    }
    value->type = static_cast<GgufValueType>(type);
    value->element_type = value->type;
    value->count = 1;
    if (value->type == GgufValueType::kString) {
      FM_ASSIGN_OR_RETURN(value->string, ReadString(context, "string"));
      return absl::OkStatus();
    }
    if (value->type != GgufValueType::kArray) {
      FM_ASSIGN_OR_RETURN(value->data, Take(ScalarSize(type), context, GgufValueTypeName(value->type)));
      if (value->type == GgufValueType::kBool && *value->data > 1) {
        return absl::InvalidArgumentError(absl::StrCat(Where(context), "bool byte ", int{*value->data}));
      }
      return absl::OkStatus();
    }
    FM_ASSIGN_OR_RETURN(uint32_t elem, Read<uint32_t>(context, "array element type"));
    if (!IsKnownValueType(elem)) {
      return absl::InvalidArgumentError(absl::StrCat(Where(context), "unknown array element type ", elem));
    }
    if (static_cast<GgufValueType>(elem) == GgufValueType::kArray) {
      return absl::UnimplementedError(absl::StrCat(Where(context), "nested arrays are not supported"));
    }
    value->element_type = static_cast<GgufValueType>(elem);
    FM_ASSIGN_OR_RETURN(value->count, Read<uint64_t>(context, "array length"));
    if (value->element_type == GgufValueType::kString) {
      if (value->count > left() / 8) {
        return absl::DataLossError(absl::StrCat(Where(context), "array of ", value->count,
                                                " strings cannot fit in the ", left(), " bytes left"));
      }
      value->strings.reserve(value->count);
      for (uint64_t j = 0; j < value->count; ++j) {
        FM_ASSIGN_OR_RETURN(std::string_view s, ReadString(context, absl::StrCat("string ", j)));
        value->strings.push_back(s);
      }
      return absl::OkStatus();
    }
    uint64_t elem_size = ScalarSize(elem);
    if (value->count > left() / elem_size) {
      return absl::DataLossError(absl::StrCat(Where(context), "array of ", value->count, " ",
                                              GgufValueTypeName(value->element_type), " cannot fit in the ", left(),
                                              " bytes left"));
    }
    FM_ASSIGN_OR_RETURN(value->data, Take(value->count * elem_size, context, "array"));
    if (value->element_type == GgufValueType::kBool) {
      for (uint64_t j = 0; j < value->count; ++j) {
        if (value->data[j] > 1) {
          return absl::InvalidArgumentError(
              absl::StrCat(Where(context), "bool byte ", int{value->data[j]}, " at index ", j));
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status ReadAlignment() {
    auto it = s_->key_index.find(Sv(kAlignmentKey));
    if (it == s_->key_index.end()) return absl::OkStatus();
    const GgufValue& v = s_->metadata[it->second].value;
    std::string context = absl::StrCat("key ", Quoted(kAlignmentKey));
    if (v.type == GgufValueType::kArray || !IsInteger(v.type)) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(context), "must be an integer, not ", GgufValueTypeName(v.type)));
    }
    WideInt a = LoadInt(v.type, v.data);
    if (a.negative || a.bits == 0 || (a.bits & (a.bits - 1)) != 0) {
      std::string shown = a.negative ? absl::StrCat(static_cast<int64_t>(a.bits)) : absl::StrCat(a.bits);
      return absl::InvalidArgumentError(
          absl::StrCat(Where(context), "alignment ", shown, " is not a positive power of two"));
    }
    s_->alignment = a.bits;
    return absl::OkStatus();
  }

  absl::Status ReadTensorInfos() {
    if (tensor_count_ > left() / kMinTensorInfoBytes) {
      return absl::DataLossError(
          absl::StrCat(Where("header"), "tensor count ", tensor_count_, " cannot fit in the ", left(), " bytes left"));
    }
    s_->tensors.reserve(tensor_count_);
    s_->tensor_index.reserve(tensor_count_);
    for (uint64_t i = 0; i < tensor_count_; ++i) {
      std::string context = absl::StrCat("tensor info ", i);
      FM_ASSIGN_OR_RETURN(std::string_view name, ReadString(context, "name"));
      if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(Where(context), "empty tensor name"));
      context = absl::StrCat("tensor ", Quoted(name));
      if (s_->tensor_index.contains(Sv(name))) {
        return absl::InvalidArgumentError(absl::StrCat(Where(context), "duplicate tensor name"));
      }
      GgufTensorInfo t;
      t.name = std::string(name);
      FM_ASSIGN_OR_RETURN(uint32_t n_dims, Read<uint32_t>(context, "n_dims"));
      if (n_dims < 1 || n_dims > kMaxDims) {
        return absl::InvalidArgumentError(absl::StrCat(Where(context), "n_dims ", n_dims, " is outside 1..", kMaxDims));
      }
      t.dims.resize(n_dims);
      uint64_t elements = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        FM_ASSIGN_OR_RETURN(t.dims[d], Read<uint64_t>(context, "dimension"));
        if (t.dims[d] == 0 || t.dims[d] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          return absl::InvalidArgumentError(absl::StrCat(Where(context), "dimension ", d, " is ", t.dims[d]));
        }
        if (__builtin_mul_overflow(elements, t.dims[d], &elements) ||
            elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          return absl::InvalidArgumentError(absl::StrCat(Where(context), "element count overflows"));
        }
      }
      t.num_elements = elements;
      FM_ASSIGN_OR_RETURN(uint32_t type_id, Read<uint32_t>(context, "type"));
      const GgmlTypeInfo* type = FindGgmlType(type_id);
      if (type == nullptr) {
        return absl::UnimplementedError(absl::StrCat(Where(context), "unknown ggml type ", type_id));
      }
      t.type = type->type;
      if (t.dims[0] % type->block_size != 0) {
        return absl::InvalidArgumentError(absl::StrCat(Where(context), "row length ", t.dims[0],
                                                       " is not a multiple of the ", type->name, " block size ",
                                                       type->block_size));
      }
      uint64_t row_bytes = t.dims[0] / type->block_size * type->type_size;
      if (__builtin_mul_overflow(row_bytes, t.num_elements / t.dims[0], &t.num_bytes)) {
        return absl::InvalidArgumentError(absl::StrCat(Where(context), "byte size overflows"));
      }
      FM_ASSIGN_OR_RETURN(t.offset, Read<uint64_t>(context, "data offset"));
      s_->tensor_index.emplace(t.name, s_->tensors.size());
      s_->tensors.push_back(std::move(t));
    }
    return absl::OkStatus();
  }

  absl::Status CheckTensorData() {
    // The data section starts at the next multiple of the alignment (pos_ <= size_ < 2^63, so no overflow).
    uint64_t a = s_->alignment;
    uint64_t rem = pos_ % a;
    s_->data_offset = rem == 0 ? pos_ : pos_ + (a - rem);
    if (s_->tensors.empty()) return absl::OkStatus();
    if (s_->data_offset > size_) {
      return absl::DataLossError(absl::StrCat(Where("data"), "truncated: the tensor data section would start at ",
                                              s_->data_offset, " but the file has ", size_, " bytes"));
    }
    uint64_t avail = size_ - s_->data_offset;
    for (GgufTensorInfo& t : s_->tensors) {
      std::string context = absl::StrCat("tensor ", Quoted(t.name));
      if (t.offset % a != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(Where(context), "data offset ", t.offset, " is not a multiple of the alignment ", a));
      }
      if (t.offset > avail || t.num_bytes > avail - t.offset) {
        return absl::DataLossError(absl::StrCat(Where(context), "data [", t.offset, ", +", t.num_bytes,
                                                ") runs past the end of the ", avail, "-byte data section"));
      }
      t.file_offset = s_->data_offset + t.offset;
    }
    std::vector<const GgufTensorInfo*> order;
    order.reserve(s_->tensors.size());
    for (const GgufTensorInfo& t : s_->tensors) order.push_back(&t);
    std::sort(order.begin(), order.end(),
              [](const GgufTensorInfo* x, const GgufTensorInfo* y) { return x->offset < y->offset; });
    for (size_t i = 1; i < order.size(); ++i) {
      const GgufTensorInfo* prev = order[i - 1];
      if (prev->offset + prev->num_bytes > order[i]->offset) {
        return absl::InvalidArgumentError(
            absl::StrCat(Where(absl::StrCat("tensor ", Quoted(order[i]->name))), "data at offset ", order[i]->offset,
                         " overlaps tensor ", Quoted(prev->name), " [", prev->offset, ", +", prev->num_bytes, ")"));
      }
    }
    return absl::OkStatus();
  }

  std::shared_ptr<const MappedFile> file_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  uint64_t tensor_count_ = 0;
  uint64_t kv_count_ = 0;
  GgufFile::State* s_ = nullptr;
};

absl::StatusOr<GgufFile> GgufFile::Open(const std::string& path) {
  FM_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::Open(path));
  return Parse(std::move(file));
}

absl::StatusOr<GgufFile> GgufFile::Parse(std::shared_ptr<const MappedFile> file) {
  if (file == nullptr) return absl::InvalidArgumentError("GgufFile::Parse: null file");
  return GgufParser(std::move(file)).Run();
}

absl::Span<const uint8_t> GgufFile::TensorBytes(const GgufTensorInfo& tensor) const {
  uint64_t size = s_->file->size();
  if (tensor.file_offset > size || tensor.num_bytes > size - tensor.file_offset) return {};
  return {s_->file->data() + tensor.file_offset, static_cast<size_t>(tensor.num_bytes)};
}

// ---- Metadata getters ----

std::string GgufFile::KeyError(std::string_view key, std::string_view what) const {
  return absl::StrCat(path(), ": key ", Quoted(key), ": ", Sv(what));
}

const GgufValue* GgufFile::FindValue(std::string_view key) const {
  auto it = s_->key_index.find(Sv(key));
  return it == s_->key_index.end() ? nullptr : &s_->metadata[it->second].value;
}

absl::StatusOr<const GgufValue*> GgufFile::GetTyped(std::string_view key, GgufValueType type) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return absl::NotFoundError(KeyError(key, "no such metadata key"));
  if (v->type != type) {
    return absl::InvalidArgumentError(
        KeyError(key, absl::StrCat("is ", GgufValueTypeName(v->type), ", not ", GgufValueTypeName(type))));
  }
  return v;
}

absl::StatusOr<const GgufValue*> GgufFile::GetArray(std::string_view key) const {
  return GetTyped(key, GgufValueType::kArray);
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  FM_ASSIGN_OR_RETURN(const GgufValue* v, GetTyped(key, GgufValueType::kString));
  return std::string(v->string);
}

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return absl::NotFoundError(KeyError(key, "no such metadata key"));
  if (!IsInteger(v->type)) {
    return absl::InvalidArgumentError(
        KeyError(key, absl::StrCat("is ", GgufValueTypeName(v->type), ", not an integer")));
  }
  WideInt w = LoadInt(v->type, v->data);
  if (w.negative) {
    return absl::OutOfRangeError(KeyError(key, absl::StrCat("value ", static_cast<int64_t>(w.bits), " is negative")));
  }
  return w.bits;
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return absl::NotFoundError(KeyError(key, "no such metadata key"));
  if (!IsInteger(v->type)) {
    return absl::InvalidArgumentError(
        KeyError(key, absl::StrCat("is ", GgufValueTypeName(v->type), ", not an integer")));
  }
  WideInt w = LoadInt(v->type, v->data);
  if (!w.negative && w.bits > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::OutOfRangeError(KeyError(key, absl::StrCat("value ", w.bits, " does not fit in int64")));
  }
  return static_cast<int64_t>(w.bits);
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return absl::NotFoundError(KeyError(key, "no such metadata key"));
  if (v->type == GgufValueType::kFloat32) return static_cast<double>(Load<float>(v->data));
  if (v->type == GgufValueType::kFloat64) return Load<double>(v->data);
  return absl::InvalidArgumentError(
      KeyError(key, absl::StrCat("is ", GgufValueTypeName(v->type), ", not FLOAT32 or FLOAT64")));
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  FM_ASSIGN_OR_RETURN(const GgufValue* v, GetTyped(key, GgufValueType::kBool));
  return *v->data != 0;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  FM_ASSIGN_OR_RETURN(const GgufValue* v, GetArray(key));
  if (v->element_type != GgufValueType::kString) {
    return absl::InvalidArgumentError(
        KeyError(key, absl::StrCat("is an array of ", GgufValueTypeName(v->element_type), ", not of STRING")));
  }
  return std::vector<std::string>(v->strings.begin(), v->strings.end());
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  FM_ASSIGN_OR_RETURN(const GgufValue* v, GetArray(key));
  if (!IsInteger(v->element_type)) {
    return absl::InvalidArgumentError(
        KeyError(key, absl::StrCat("is an array of ", GgufValueTypeName(v->element_type), ", not of an integer type")));
  }
  const uint64_t size = ScalarSize(static_cast<uint32_t>(v->element_type));
  std::vector<int64_t> out(v->count);
  for (uint64_t i = 0; i < v->count; ++i) {
    WideInt w = LoadInt(v->element_type, v->data + i * size);
    if (!w.negative && w.bits > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::OutOfRangeError(KeyError(key, absl::StrCat("element ", i, " = ", w.bits, " does not fit in int64")));
    }
    out[i] = static_cast<int64_t>(w.bits);
  }
  return out;
}

absl::StatusOr<std::vector<double>> GgufFile::GetFloatArray(std::string_view key) const {
  FM_ASSIGN_OR_RETURN(const GgufValue* v, GetArray(key));
  std::vector<double> out;
  if (v->element_type == GgufValueType::kFloat32) {
    out.resize(v->count);
    for (uint64_t i = 0; i < v->count; ++i) out[i] = Load<float>(v->data + 4 * i);
  } else if (v->element_type == GgufValueType::kFloat64) {
    out.resize(v->count);
    for (uint64_t i = 0; i < v->count; ++i) out[i] = Load<double>(v->data + 8 * i);
  } else {
    return absl::InvalidArgumentError(KeyError(
        key, absl::StrCat("is an array of ", GgufValueTypeName(v->element_type), ", not of FLOAT32 or FLOAT64")));
  }
  return out;
}

// ---- Tensors ----

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = s_->tensor_index.find(Sv(name));
  return it == s_->tensor_index.end() ? nullptr : &s_->tensors[it->second];
}

absl::StatusOr<const GgufTensorInfo*> GgufFile::GetTensor(std::string_view name) const {
  const GgufTensorInfo* t = FindTensor(name);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat(path(), ": no tensor ", Quoted(name)));
  return t;
}

}  // namespace fm
