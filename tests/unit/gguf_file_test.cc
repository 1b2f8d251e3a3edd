// GgufFile against gguf-py: every metadata value and tensor info of the synthetic fixture files and of the real
// SmolLM2-135M-Instruct GGUF must equal what gguf.GGUFReader reads (tests/parity/make_gguf_fixtures.py).
#include "worker/engine/gguf/gguf_file.h"

#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "nlohmann/json.hpp"

namespace fm {
namespace {

using nlohmann::json;

const std::string kFixtures = std::string(FM_FIXTURES_DIR) + "/gguf";

json LoadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "missing fixture " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

GgufValueType ValueTypeFromName(const std::string& name) {
  for (uint32_t i = 0; i <= 12; ++i) {
    if (GgufValueTypeName(static_cast<GgufValueType>(i)) == name) return static_cast<GgufValueType>(i);
  }
  ADD_FAILURE() << "unknown value type name " << name;
  return GgufValueType::kUint8;
}

bool IsSigned(GgufValueType t) {
  return t == GgufValueType::kInt8 || t == GgufValueType::kInt16 || t == GgufValueType::kInt32 ||
         t == GgufValueType::kInt64;
}
bool IsUnsigned(GgufValueType t) {
  return t == GgufValueType::kUint8 || t == GgufValueType::kUint16 || t == GgufValueType::kUint32 ||
         t == GgufValueType::kUint64;
}

// Checks one scalar value through the typed getters, including the errors of the getters that must refuse it.
void CheckScalar(const GgufFile& f, const std::string& key, GgufValueType type, const json& expected) {
  SCOPED_TRACE(key);
  if (IsUnsigned(type)) {
    uint64_t want = expected.get<uint64_t>();
    auto u = f.GetUint(key);
    ASSERT_TRUE(u.ok()) << u.status();
    EXPECT_EQ(*u, want);
    auto i = f.GetInt(key);
    if (want > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      EXPECT_EQ(i.status().code(), absl::StatusCode::kOutOfRange);
    } else {
      ASSERT_TRUE(i.ok()) << i.status();
      EXPECT_EQ(static_cast<uint64_t>(*i), want);
    }
  } else if (IsSigned(type)) {
    int64_t want = expected.get<int64_t>();
    auto i = f.GetInt(key);
    ASSERT_TRUE(i.ok()) << i.status();
    EXPECT_EQ(*i, want);
    auto u = f.GetUint(key);
    if (want < 0) {
      EXPECT_EQ(u.status().code(), absl::StatusCode::kOutOfRange);
    } else {
      ASSERT_TRUE(u.ok()) << u.status();
      EXPECT_EQ(*u, static_cast<uint64_t>(want));
    }
  } else if (type == GgufValueType::kFloat32) {
    auto v = f.GetFloat(key);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(std::bit_cast<uint32_t>(static_cast<float>(*v)), expected.get<uint32_t>());
  } else if (type == GgufValueType::kFloat64) {
    auto v = f.GetFloat(key);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(std::bit_cast<uint64_t>(*v), expected.get<uint64_t>());
  } else if (type == GgufValueType::kBool) {
    auto v = f.GetBool(key);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(*v, expected.get<bool>());
  } else if (type == GgufValueType::kString) {
    auto v = f.GetString(key);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(*v, expected.get<std::string>());
  } else {
    FAIL() << "not a scalar type";
  }
  // Getters for other kinds refuse with INVALID_ARGUMENT naming the file and the key.
  absl::Status wrong = type == GgufValueType::kString ? f.GetUint(key).status() : f.GetString(key).status();
  EXPECT_EQ(wrong.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.message().find(f.path()), std::string::npos) << wrong;
  EXPECT_NE(wrong.message().find(key), std::string::npos) << wrong;
  EXPECT_EQ(f.GetStringArray(key).status().code(), absl::StatusCode::kInvalidArgument);
}

void CheckArray(const GgufFile& f, const std::string& key, GgufValueType elem, const json& expected) {
  SCOPED_TRACE(key);
  const GgufValue* v = f.FindValue(key);
  ASSERT_NE(v, nullptr);
  ASSERT_EQ(v->count, expected.size());
  if (elem == GgufValueType::kString) {
    auto got = f.GetStringArray(key);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), expected.size());
    for (size_t i = 0; i < got->size(); ++i) EXPECT_EQ((*got)[i], expected[i].get<std::string>()) << i;
    EXPECT_EQ(f.GetIntArray(key).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(f.GetFloatArray(key).status().code(), absl::StatusCode::kInvalidArgument);
  } else if (IsSigned(elem) || IsUnsigned(elem)) {
    bool fits = true;
    for (const json& e : expected) {
      if (e.is_number_unsigned() && e.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fits = false;
      }
    }
    auto got = f.GetIntArray(key);
    if (!fits) {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kOutOfRange);
      // The raw elements are still there.
      ASSERT_EQ(elem, GgufValueType::kUint64);
      for (size_t i = 0; i < expected.size(); ++i) {
        uint64_t x;
        std::memcpy(&x, v->data + 8 * i, 8);
        EXPECT_EQ(x, expected[i].get<uint64_t>()) << i;
      }
    } else {
      ASSERT_TRUE(got.ok()) << got.status();
      for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ((*got)[i], expected[i].get<int64_t>()) << i;
    }
    EXPECT_EQ(f.GetFloatArray(key).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(f.GetStringArray(key).status().code(), absl::StatusCode::kInvalidArgument);
  } else if (elem == GgufValueType::kFloat32 || elem == GgufValueType::kFloat64) {
    auto got = f.GetFloatArray(key);
    ASSERT_TRUE(got.ok()) << got.status();
    for (size_t i = 0; i < expected.size(); ++i) {
      if (elem == GgufValueType::kFloat32) {
        EXPECT_EQ(std::bit_cast<uint32_t>(static_cast<float>((*got)[i])), expected[i].get<uint32_t>()) << i;
      } else {
        EXPECT_EQ(std::bit_cast<uint64_t>((*got)[i]), expected[i].get<uint64_t>()) << i;
      }
    }
    EXPECT_EQ(f.GetIntArray(key).status().code(), absl::StatusCode::kInvalidArgument);
  } else if (elem == GgufValueType::kBool) {
    for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(v->data[i] != 0, expected[i].get<bool>()) << i;
    EXPECT_EQ(f.GetIntArray(key).status().code(), absl::StatusCode::kInvalidArgument);
  } else {
    FAIL() << "unexpected element type";
  }
  EXPECT_EQ(f.GetString(key).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetFloat(key).status().code(), absl::StatusCode::kInvalidArgument);
}

// Compares everything GgufFile exposes with gguf-py's description of the same file.
void CheckAgainstManifest(const GgufFile& f, const json& m) {
  EXPECT_EQ(f.version(), m["version"].get<uint32_t>());
  EXPECT_EQ(f.alignment(), m["alignment"].get<uint64_t>());
  EXPECT_EQ(f.mapped_file()->size(), m["file_size"].get<uint64_t>());
  if (!m["tensors"].empty()) {
    EXPECT_EQ(f.data_offset(), m["data_offset"].get<uint64_t>());
  }

  const json& meta = m["metadata"];
  ASSERT_EQ(f.metadata().size(), meta.size());
  for (size_t i = 0; i < meta.size(); ++i) {
    const GgufKeyValue& kv = f.metadata()[i];
    std::string key = meta[i]["key"].get<std::string>();
    ASSERT_EQ(kv.key, key) << "metadata order differs at " << i;
    ASSERT_TRUE(f.HasKey(key));
    ASSERT_EQ(f.FindValue(key), &kv.value);
    GgufValueType type = ValueTypeFromName(meta[i]["type"]);
    GgufValueType elem = ValueTypeFromName(meta[i]["element_type"]);
    ASSERT_EQ(kv.value.type, type) << key;
    ASSERT_EQ(kv.value.element_type, elem) << key;
    if (type == GgufValueType::kArray) {
      CheckArray(f, key, elem, meta[i]["value"]);
    } else {
      CheckScalar(f, key, type, meta[i]["value"]);
    }
  }

  const json& tensors = m["tensors"];
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const json& want = tensors[i];
    const GgufTensorInfo& t = f.tensors()[i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, want["name"].get<std::string>());
    EXPECT_EQ(t.dims, want["dims"].get<std::vector<uint64_t>>());
    EXPECT_EQ(static_cast<uint32_t>(t.type), want["type"].get<uint32_t>());
    EXPECT_EQ(GgmlTypeName(t.type), want["type_name"].get<std::string>());
    EXPECT_EQ(t.offset, want["offset"].get<uint64_t>());
    EXPECT_EQ(t.file_offset, f.data_offset() + t.offset);
    EXPECT_EQ(t.num_bytes, want["nbytes"].get<uint64_t>());
    EXPECT_EQ(t.num_elements, want["n_elements"].get<uint64_t>());
    EXPECT_EQ(t.row_length(), t.dims[0]);
    EXPECT_EQ(t.num_rows() * t.row_length(), t.num_elements);
    EXPECT_EQ(t.row_bytes() * t.num_rows(), t.num_bytes);
    EXPECT_EQ(f.FindTensor(t.name), &t);
    auto got = f.GetTensor(t.name);
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, &t);
    absl::Span<const uint8_t> bytes = f.TensorBytes(t);
    EXPECT_EQ(bytes.size(), t.num_bytes);
    EXPECT_EQ(bytes.data(), f.mapped_file()->data() + t.file_offset);
  }
}

TEST(GgufFileSynthetic, MatchesGgufPyForEveryFile) {
  json manifest = LoadJson(kFixtures + "/synthetic/manifest.json");
  ASSERT_GE(manifest.size(), 4u);
  for (const json& m : manifest) {
    std::string path = kFixtures + "/synthetic/" + m["file"].get<std::string>();
    SCOPED_TRACE(path);
    auto f = GgufFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->path(), path);
    CheckAgainstManifest(*f, m);
  }
}

TEST(GgufFileSynthetic, Version2ReadsTheSame) {
  // v2 and v3 differ only in v3 allowing big-endian files: the same bytes with version 2 must read the same.
  json manifest = LoadJson(kFixtures + "/synthetic/manifest.json");
  for (const json& m : manifest) {
    std::string bytes = ReadBytes(kFixtures + "/synthetic/" + m["file"].get<std::string>());
    ASSERT_EQ(bytes[4], 3);
    bytes[4] = 2;
    auto f = GgufFile::Parse(MappedFile::FromBytes(bytes, "v2-" + m["file"].get<std::string>()));
    ASSERT_TRUE(f.ok()) << f.status();
    json m2 = m;
    m2["version"] = 2;
    CheckAgainstManifest(*f, m2);
  }
}

TEST(GgufFileSynthetic, AccessorErrorsNameFileAndKey) {
  std::string path = kFixtures + "/synthetic/types.gguf";
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  for (absl::Status s : {f->GetString("no.such.key").status(), f->GetUint("no.such.key").status(),
                         f->GetInt("no.such.key").status(), f->GetFloat("no.such.key").status(),
                         f->GetBool("no.such.key").status(), f->GetStringArray("no.such.key").status(),
                         f->GetIntArray("no.such.key").status(), f->GetFloatArray("no.such.key").status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
    EXPECT_NE(s.message().find(path), std::string::npos) << s;
    EXPECT_NE(s.message().find("no.such.key"), std::string::npos) << s;
  }
  EXPECT_FALSE(f->HasKey("no.such.key"));
  EXPECT_EQ(f->FindValue("no.such.key"), nullptr);
  EXPECT_EQ(f->FindTensor("missing"), nullptr);
  absl::Status s = f->GetTensor("missing").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find(path), std::string::npos) << s;
  EXPECT_NE(s.message().find("missing"), std::string::npos) << s;
  // A float is not an integer, a bool is not a float.
  EXPECT_EQ(f->GetUint("test.f32").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f->GetFloat("test.bool_true").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f->GetBool("test.u8").status().code(), absl::StatusCode::kInvalidArgument);
  // Copies share the parsed state and the mapping.
  GgufFile copy = *f;
  EXPECT_EQ(&copy.metadata(), &f->metadata());
  EXPECT_EQ(copy.FindValue("test.string")->string.data(), f->FindValue("test.string")->string.data());
}

TEST(GgufFileSynthetic, OpenMissingFileIsNotFound) {
  absl::Status s = GgufFile::Open(kFixtures + "/synthetic/does-not-exist.gguf").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("does-not-exist.gguf"), std::string::npos) << s;
  EXPECT_EQ(GgufFile::Parse(nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GgufFileSmolLM2, MatchesGgufPy) {
  json m = LoadJson(kFixtures + "/smollm2.json");
  std::string path = m["path"].get<std::string>();
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  CheckAgainstManifest(*f, m);

  // Consistency the model loader will rely on (the values themselves were compared with gguf-py above).
  EXPECT_EQ(*f->GetString("general.architecture"), "llama");
  EXPECT_EQ(*f->GetString("tokenizer.ggml.model"), "gpt2");
  auto tokens = f->GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ(tokens->size(), *f->GetUint("llama.vocab_size"));
  const GgufTensorInfo* embd = f->FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, GgmlType::kQ8_0);
  EXPECT_EQ(embd->dims, (std::vector<uint64_t>{*f->GetUint("llama.embedding_length"), tokens->size()}));
}

}  // namespace
}  // namespace fm
