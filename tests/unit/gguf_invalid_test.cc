// GgufFile on malformed input, built byte by byte here: each defect must be refused with the right status code and a
// message naming the file (and the key or tensor), without reading out of bounds or allocating what the file claims.
// Then thousands of deterministic random mutations of valid files: parse (and, when that succeeds, read every value
// and dequantise every tensor) must end in OK or a clean error, never a crash.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "worker/engine/gguf/gguf_dequant.h"
#include "worker/engine/gguf/gguf_file.h"

namespace fm {
namespace {

using absl::StatusCode;

void PutU32(std::string* s, uint32_t v) { s->append(reinterpret_cast<const char*>(&v), 4); }
void PutU64(std::string* s, uint64_t v) { s->append(reinterpret_cast<const char*>(&v), 8); }
void PutStr(std::string* s, std::string_view v) {
  PutU64(s, v.size());
  s->append(v);
}

// Encoded metadata entries.
std::string KvRaw(std::string_view key, uint32_t type, std::string_view payload) {
  std::string s;
  PutStr(&s, key);
  PutU32(&s, type);
  s.append(payload);
  return s;
}
std::string KvU32(std::string_view key, uint32_t v) {
  std::string p;
  PutU32(&p, v);
  return KvRaw(key, 4, p);
}
std::string KvString(std::string_view key, std::string_view v) {
  std::string p;
  PutStr(&p, v);
  return KvRaw(key, 8, p);
}
std::string KvStringArray(std::string_view key, const std::vector<std::string>& v) {
  std::string p;
  PutU32(&p, 8);
  PutU64(&p, v.size());
  for (const std::string& x : v) PutStr(&p, x);
  return KvRaw(key, 9, p);
}

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type;
  uint64_t offset;
};

struct FileSpec {
  std::string magic = "GGUF";
  uint32_t version = 3;
  std::optional<uint64_t> tensor_count;  // override of the true count
  std::optional<uint64_t> kv_count;
  std::vector<std::string> kvs;
  std::vector<TensorSpec> tensors;
  uint64_t alignment = 32;             // for the padding before the data section
  std::optional<uint64_t> data_bytes;  // default: up to the end of the last tensor
};

// Where each section of a built file ends.
struct Sections {
  size_t header_end, kv_end, infos_end, data_start, size;
};

// The tensor's byte size, or 0 when it is unknown or absurd (the builder then writes no data for it).
uint64_t TensorBytesOf(const TensorSpec& t) {
  const GgmlTypeInfo* info = FindGgmlType(t.type);
  uint64_t n = 1;
  for (uint64_t d : t.dims) {
    if (__builtin_mul_overflow(n, d, &n)) return 0;
  }
  if (info == nullptr || n > (uint64_t{1} << 20)) return 0;
  return n / info->block_size * info->type_size;
}

std::string Build(const FileSpec& spec, Sections* sections = nullptr) {
  std::string s = spec.magic;
  PutU32(&s, spec.version);
  PutU64(&s, spec.tensor_count.value_or(spec.tensors.size()));
  PutU64(&s, spec.kv_count.value_or(spec.kvs.size()));
  Sections sec{};
  sec.header_end = s.size();
  for (const std::string& kv : spec.kvs) s += kv;
  sec.kv_end = s.size();
  uint64_t data = 0;
  for (const TensorSpec& t : spec.tensors) {
    PutStr(&s, t.name);
    PutU32(&s, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) PutU64(&s, d);
    PutU32(&s, t.type);
    PutU64(&s, t.offset);
    if (t.offset < (uint64_t{1} << 20)) data = std::max(data, t.offset + TensorBytesOf(t));
  }
  sec.infos_end = s.size();
  while (s.size() % spec.alignment != 0) s.push_back('\0');
  sec.data_start = s.size();
  uint64_t n = spec.data_bytes.value_or(data);
  for (uint64_t i = 0; i < n; ++i) s.push_back(static_cast<char>((i * 7) & 0x3f));  // small f16 scales stay finite
  sec.size = s.size();
  if (sections != nullptr) *sections = sec;
  return s;
}

// A small valid file: three tensors of three types, four metadata entries.
FileSpec ValidSpec() {
  FileSpec spec;
  spec.kvs = {KvString("general.architecture", "test"), KvU32("general.alignment", 32),
              KvStringArray("tokenizer.ggml.tokens", {"a", "bc", "日本"}), KvRaw("test.u8", 0, "\x07")};
  spec.tensors = {{"a", {8, 2}, 0, 0}, {"b", {32}, 8, 64}, {"c", {256, 1}, 12, 128}};
  return spec;
}

absl::Status ParseBytes(std::string bytes, const std::string& name) {
  return GgufFile::Parse(MappedFile::FromBytes(std::move(bytes), name)).status();
}

// Parses and expects `code` with a message naming the file and containing `fragment`.
void ExpectError(const FileSpec& spec, const std::string& name, StatusCode code, const std::string& fragment) {
  absl::Status s = ParseBytes(Build(spec), name);
  EXPECT_EQ(s.code(), code) << name << ": " << s;
  EXPECT_NE(s.message().find(name), std::string::npos) << s;
  EXPECT_NE(s.message().find(fragment), std::string::npos) << "expected '" << fragment << "' in: " << s;
}

TEST(GgufInvalid, ValidBaseParsesAndDecodes) {
  auto f = GgufFile::Parse(MappedFile::FromBytes(Build(ValidSpec()), "valid.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(*f->GetUint("test.u8"), 7u);
  EXPECT_EQ(*f->GetStringArray("tokenizer.ggml.tokens"), (std::vector<std::string>{"a", "bc", "日本"}));
  for (const GgufTensorInfo& t : f->tensors()) EXPECT_TRUE(DequantizeToVector(*f, t).ok()) << t.name;
}

TEST(GgufInvalid, HeaderDefects) {
  FileSpec spec = ValidSpec();
  spec.magic = "GGML";
  ExpectError(spec, "bad_magic.gguf", StatusCode::kInvalidArgument, "not a GGUF file");
  spec = ValidSpec();
  spec.version = 1;
  ExpectError(spec, "v1.gguf", StatusCode::kUnimplemented, "version 1");
  spec.version = 4;
  ExpectError(spec, "v4.gguf", StatusCode::kUnimplemented, "version 4");
  spec.version = 0;
  ExpectError(spec, "v0.gguf", StatusCode::kUnimplemented, "version 0");
  spec.version = 0x03000000;  // a big-endian file's version field read little-endian
  ExpectError(spec, "big_endian.gguf", StatusCode::kUnimplemented, "big-endian");
  spec.version = 0x02000000;
  ExpectError(spec, "big_endian2.gguf", StatusCode::kUnimplemented, "big-endian");
}

TEST(GgufInvalid, TruncatedAtEveryByte) {
  Sections sec;
  std::string full = Build(ValidSpec(), &sec);
  ASSERT_TRUE(ParseBytes(full, "full.gguf").ok());
  for (size_t len = 0; len < full.size(); ++len) {
    absl::Status s = ParseBytes(full.substr(0, len), "truncated.gguf");
    ASSERT_EQ(s.code(), StatusCode::kDataLoss) << "length " << len << ": " << s;
    EXPECT_NE(s.message().find("truncated.gguf"), std::string::npos) << s;
    // The message says which part was being read.
    const std::string m(s.message());
    if (len < sec.header_end) {
      EXPECT_NE(m.find("header"), std::string::npos) << s;
    } else if (len < sec.kv_end) {
      EXPECT_TRUE(m.find("key") != std::string::npos || m.find("metadata") != std::string::npos) << s;
    } else if (len < sec.infos_end) {
      EXPECT_NE(m.find("tensor"), std::string::npos) << s;
    } else {  // in the padding (the data section cannot start) or in the data (a tensor runs past the end)
      EXPECT_NE(m.find("data"), std::string::npos) << s;
    }
  }
}

TEST(GgufInvalid, AbsurdCountsAndLengthsFailFast) {
  FileSpec spec = ValidSpec();
  spec.tensor_count = uint64_t{1} << 60;
  ExpectError(spec, "many_tensors.gguf", StatusCode::kDataLoss, "tensor count");
  spec = ValidSpec();
  spec.kv_count = uint64_t{1} << 60;
  ExpectError(spec, "many_kvs.gguf", StatusCode::kDataLoss, "metadata count");
  spec = ValidSpec();
  spec.kv_count = ~uint64_t{0};
  ExpectError(spec, "max_kvs.gguf", StatusCode::kDataLoss, "metadata count");

  // A key claiming 2^40 bytes.
  spec = ValidSpec();
  std::string kv;
  PutU64(&kv, uint64_t{1} << 40);
  kv += "abc";
  spec.kvs.insert(spec.kvs.begin(), kv);
  ExpectError(spec, "long_key.gguf", StatusCode::kDataLoss, "1099511627776");
  // A string value claiming 2^40 bytes.
  spec = ValidSpec();
  std::string payload;
  PutU64(&payload, uint64_t{1} << 40);
  spec.kvs.push_back(KvRaw("test.long", 8, payload + "xyz"));
  ExpectError(spec, "long_string.gguf", StatusCode::kDataLoss, "test.long");
  // Arrays claiming 2^60 u32 and 2^61 strings, and 2^64-1 u8.
  for (auto [elem, count, name] : {std::tuple<uint32_t, uint64_t, std::string>{4, uint64_t{1} << 60, "arr_u32"},
                                   {8, uint64_t{1} << 61, "arr_str"},
                                   {0, ~uint64_t{0}, "arr_u8"}}) {
    spec = ValidSpec();
    payload.clear();
    PutU32(&payload, elem);
    PutU64(&payload, count);
    spec.kvs.push_back(KvRaw("test." + name, 9, payload + "0123"));
    ExpectError(spec, name + ".gguf", StatusCode::kDataLoss, "test." + name);
  }
  // A tensor name claiming 2^40 bytes.
  spec = ValidSpec();
  std::string bytes = Build(spec);
  Sections sec;
  Build(spec, &sec);
  uint64_t huge = uint64_t{1} << 40;
  std::memcpy(&bytes[sec.kv_end], &huge, 8);
  absl::Status s = ParseBytes(bytes, "long_name.gguf");
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("long_name.gguf"), std::string::npos) << s;
}

TEST(GgufInvalid, TensorShapeDefects) {
  FileSpec spec = ValidSpec();
  spec.tensors[1].dims = {};
  ExpectError(spec, "ndims0.gguf", StatusCode::kInvalidArgument, "tensor 'b'");
  spec.tensors[1].dims = {32, 1, 1, 1, 1};
  ExpectError(spec, "ndims5.gguf", StatusCode::kInvalidArgument, "n_dims 5");
  spec.tensors[1].dims = {32, 0};
  ExpectError(spec, "dim0.gguf", StatusCode::kInvalidArgument, "tensor 'b'");
  spec.tensors[1].dims = {uint64_t{1} << 32, uint64_t{1} << 32};
  ExpectError(spec, "overflow.gguf", StatusCode::kInvalidArgument, "overflow");
  spec.tensors[1].dims = {~uint64_t{0}};
  ExpectError(spec, "dim_max.gguf", StatusCode::kInvalidArgument, "tensor 'b'");
  spec.tensors[1].dims = {33};  // Q8_0 rows are whole 32-value blocks
  ExpectError(spec, "partial_block.gguf", StatusCode::kInvalidArgument, "block size");
  spec = ValidSpec();
  spec.tensors[2].dims = {128, 2};  // Q4_K: 256-value blocks
  ExpectError(spec, "partial_kblock.gguf", StatusCode::kInvalidArgument, "tensor 'c'");
  // Four dims are fine.
  spec = ValidSpec();
  spec.tensors[0].dims = {2, 2, 2, 2};
  EXPECT_TRUE(ParseBytes(Build(spec), "dims4.gguf").ok());
}

TEST(GgufInvalid, TensorDataDefects) {
  FileSpec spec = ValidSpec();
  spec.tensors[1].offset = 68;
  ExpectError(spec, "misaligned.gguf", StatusCode::kInvalidArgument, "not a multiple of the alignment");
  spec = ValidSpec();
  spec.tensors[1].offset = 32;  // "a" occupies [0, 64)
  ExpectError(spec, "overlap.gguf", StatusCode::kInvalidArgument, "overlaps tensor 'a'");
  spec = ValidSpec();
  spec.tensors[2].offset = 0;  // listed last, stored first
  ExpectError(spec, "overlap2.gguf", StatusCode::kInvalidArgument, "overlaps");
  spec = ValidSpec();
  spec.data_bytes = 128 + 143;  // the last tensor is one byte short
  ExpectError(spec, "short_data.gguf", StatusCode::kDataLoss, "tensor 'c'");
  spec = ValidSpec();
  spec.data_bytes = 272;
  spec.tensors[2].offset = uint64_t{1} << 62;
  ExpectError(spec, "far_offset.gguf", StatusCode::kDataLoss, "tensor 'c'");
  spec.tensors[2].offset = ~uint64_t{31};  // aligned, and offset + size wraps around
  ExpectError(spec, "wrap_offset.gguf", StatusCode::kDataLoss, "tensor 'c'");
}

TEST(GgufInvalid, UnknownTypesAndDuplicates) {
  FileSpec spec = ValidSpec();
  spec.tensors[1].type = 99;
  ExpectError(spec, "unknown_type.gguf", StatusCode::kUnimplemented, "tensor 'b': unknown ggml type 99");
  spec.tensors[1].type = 4;  // a retired id (Q4_2)
  ExpectError(spec, "retired_type.gguf", StatusCode::kUnimplemented, "tensor 'b'");
  spec = ValidSpec();
  spec.tensors[2].name = "a";
  ExpectError(spec, "dup_tensor.gguf", StatusCode::kInvalidArgument, "tensor 'a': duplicate");
  spec = ValidSpec();
  spec.tensors[2].name = "";
  ExpectError(spec, "empty_name.gguf", StatusCode::kInvalidArgument, "empty tensor name");
  spec = ValidSpec();
  spec.kvs.push_back(KvString("general.architecture", "again"));
  ExpectError(spec, "dup_key.gguf", StatusCode::kInvalidArgument, "key 'general.architecture': duplicate");
}

TEST(GgufInvalid, MetadataValueDefects) {
  FileSpec spec = ValidSpec();
  spec.kvs.push_back(KvRaw("test.type13", 13, "\0\0\0\0"));
  ExpectError(spec, "value_type.gguf", StatusCode::kInvalidArgument, "key 'test.type13': unknown value type 13");
  spec = ValidSpec();
  std::string p;
  PutU32(&p, 9);  // array of arrays
  PutU64(&p, 1);
  PutU32(&p, 4);
  PutU64(&p, 1);
  PutU32(&p, 5);
  spec.kvs.push_back(KvRaw("test.nested", 9, p));
  ExpectError(spec, "nested.gguf", StatusCode::kUnimplemented, "key 'test.nested': nested arrays");
  spec = ValidSpec();
  p.clear();
  PutU32(&p, 77);
  PutU64(&p, 0);
  spec.kvs.push_back(KvRaw("test.elem", 9, p));
  ExpectError(spec, "elem_type.gguf", StatusCode::kInvalidArgument, "key 'test.elem'");
  spec = ValidSpec();
  spec.kvs.push_back(KvRaw("test.bool", 7, "\x02"));
  ExpectError(spec, "bool.gguf", StatusCode::kInvalidArgument, "key 'test.bool'");
  // Empty arrays (which gguf-py cannot write) are valid.
  spec = ValidSpec();
  p.clear();
  PutU32(&p, 8);
  PutU64(&p, 0);
  spec.kvs.push_back(KvRaw("test.empty_strs", 9, p));
  p.clear();
  PutU32(&p, 6);
  PutU64(&p, 0);
  spec.kvs.push_back(KvRaw("test.empty_f32", 9, p));
  auto f = GgufFile::Parse(MappedFile::FromBytes(Build(spec), "empty_arrays.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(f->GetStringArray("test.empty_strs")->empty());
  EXPECT_TRUE(f->GetFloatArray("test.empty_f32")->empty());
}

TEST(GgufInvalid, AlignmentDefects) {
  auto with_alignment = [](std::string kv) {
    FileSpec spec = ValidSpec();
    spec.kvs[1] = std::move(kv);
    return spec;
  };
  for (uint32_t bad : {0u, 48u, 3u, 0x80000001u}) {
    ExpectError(with_alignment(KvU32("general.alignment", bad)), "align" + std::to_string(bad) + ".gguf",
                StatusCode::kInvalidArgument, "not a positive power of two");
  }
  std::string p;
  PutU32(&p, static_cast<uint32_t>(-32));
  ExpectError(with_alignment(KvRaw("general.alignment", 5, p)), "align_negative.gguf", StatusCode::kInvalidArgument,
              "alignment -32");
  ExpectError(with_alignment(KvString("general.alignment", "32")), "align_string.gguf", StatusCode::kInvalidArgument,
              "key 'general.alignment': must be an integer");
  // Another width of a valid alignment is accepted, and a larger one moves the data section.
  p.clear();
  PutU64(&p, 64);
  FileSpec spec = with_alignment(KvRaw("general.alignment", 10, p));
  spec.alignment = 64;
  auto f = GgufFile::Parse(MappedFile::FromBytes(Build(spec), "align64.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  // With alignment 64, the 32-aligned offset of "c" (128) still works but 32 alone would not.
  spec.tensors[1].offset = 96;
  ExpectError(spec, "align64_misaligned.gguf", StatusCode::kInvalidArgument, "tensor 'b'");
}

std::string ReadFixture(const std::string& name) {
  std::ifstream in(std::string(FM_FIXTURES_DIR) + "/gguf/synthetic/" + name, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << name;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Parses; if that succeeds, reads every value and decodes every tensor. Returns the parse status.
absl::Status Exercise(const std::string& bytes, const std::string& name) {
  auto f = GgufFile::Parse(MappedFile::FromBytes(bytes, name));
  if (!f.ok()) return f.status();
  for (const GgufKeyValue& kv : f->metadata()) {
    (void)f->GetString(kv.key);
    (void)f->GetUint(kv.key);
    (void)f->GetInt(kv.key);
    (void)f->GetFloat(kv.key);
    (void)f->GetBool(kv.key);
    (void)f->GetStringArray(kv.key);
    (void)f->GetIntArray(kv.key);
    (void)f->GetFloatArray(kv.key);
  }
  for (const GgufTensorInfo& t : f->tensors()) {
    auto v = DequantizeToVector(*f, t);
    if (CanDequantize(t.type)) {
      EXPECT_TRUE(v.ok()) << name << ": a parsed tensor must decode: " << v.status();
    }
  }
  return absl::OkStatus();
}

TEST(GgufInvalid, RandomMutationsNeverCrash) {
  std::mt19937_64 rng(0x6767756675);
  const std::vector<std::pair<std::string, std::string>> bases = {
      {"built", Build(ValidSpec())},
      {"aligned64", ReadFixture("aligned64.gguf")},
      {"types", ReadFixture("types.gguf")},
  };
  const uint64_t interesting[] = {0,
                                  1,
                                  2,
                                  4,
                                  5,
                                  31,
                                  32,
                                  33,
                                  255,
                                  0x7fffffff,
                                  0x80000000,
                                  0xffffffff,
                                  uint64_t{1} << 32,
                                  uint64_t{1} << 40,
                                  uint64_t{1} << 62,
                                  ~uint64_t{0}};
  int ok = 0, failed = 0;
  for (const auto& [base_name, base] : bases) {
    ASSERT_TRUE(Exercise(base, base_name).ok()) << base_name;
    const int iterations = base_name == "types" ? 2000 : 1500;
    for (int it = 0; it < iterations; ++it) {
      std::string bytes = base;
      // Most files' interesting bytes are at the front: bias positions towards it half the time.
      auto pos = [&]() -> size_t {
        size_t limit = (rng() & 1) ? bytes.size() : std::min<size_t>(bytes.size(), 512);
        return rng() % limit;
      };
      const int kind = static_cast<int>(rng() % 5);
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits && !bytes.empty(); ++e) {
        if (kind == 0) {
          bytes[pos()] = static_cast<char>(rng());
        } else if (kind == 1) {
          bytes[pos()] ^= static_cast<char>(1u << (rng() % 8));
        } else if (kind == 2 && bytes.size() >= 8) {
          uint64_t v = interesting[rng() % (sizeof(interesting) / sizeof(interesting[0]))];
          size_t p = pos() % (bytes.size() - 7);
          std::memcpy(&bytes[p], &v, (rng() & 1) ? 8 : 4);
        } else if (kind == 3) {
          bytes.resize(pos());
        } else {
          bytes.insert(pos(), 1 + rng() % 8, static_cast<char>(rng()));
        }
      }
      const std::string name = base_name + "-mutation-" + std::to_string(it) + ".gguf";
      absl::Status s = Exercise(bytes, name);
      if (s.ok()) {
        ++ok;
        continue;
      }
      ++failed;
      EXPECT_TRUE(s.code() == StatusCode::kDataLoss || s.code() == StatusCode::kInvalidArgument ||
                  s.code() == StatusCode::kUnimplemented)
          << s;
      EXPECT_NE(s.message().find(name), std::string::npos) << s;
    }
  }
  // Both outcomes occur, so the mutations reach past the first check.
  EXPECT_GT(ok, 100);
  EXPECT_GT(failed, 100);
  std::cout << "mutations: " << ok << " parsed, " << failed << " refused\n";
}

}  // namespace
}  // namespace fm
