// Dequantisation against gguf-py: every tensor of the synthetic fixture files (every supported type) and of the real
// SmolLM2-135M-Instruct GGUF must decode to exactly the float32 bit patterns gguf.quants.dequantize produces
// (tests/parity/make_gguf_fixtures.py). Exact, not within an ulp: both sides do the same float32 operations in the
// same order. Also row ranges, threading, the error cases, and the SmolLM2 decode speed (printed).
#include "worker/engine/gguf/gguf_dequant.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
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

std::vector<float> ReadF32(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  EXPECT_TRUE(in.good()) << "missing fixture " << path;
  std::vector<float> v(static_cast<size_t>(in.tellg()) / 4);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
  return v;
}

// The fixture's checksum: sum of bits[i] * (i + 1) mod 2^64 over the float32 bit patterns.
uint64_t Checksum(absl::Span<const float> v) {
  uint64_t sum = 0;
  for (size_t i = 0; i < v.size(); ++i) sum += uint64_t{std::bit_cast<uint32_t>(v[i])} * (i + 1);
  return sum;
}

// Bit-exact comparison; reports the first few differing indices.
void ExpectSameBits(absl::Span<const float> got, absl::Span<const float> want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  size_t differing = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::bit_cast<uint32_t>(got[i]) != std::bit_cast<uint32_t>(want[i])) {
      ++differing;
      if (reported++ < 5) ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", gguf-py " << want[i];
    }
  }
  EXPECT_EQ(differing, 0u) << what;
}

TEST(GgufDequant, SyntheticTensorsMatchGgufPyExactly) {
  json manifest = LoadJson(kFixtures + "/synthetic/manifest.json");
  std::set<GgmlType> covered;
  for (const json& m : manifest) {
    std::string path = kFixtures + "/synthetic/" + m["file"].get<std::string>();
    auto f = GgufFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    for (const json& want : m["tensors"]) {
      const GgufTensorInfo* t = f->FindTensor(want["name"].get<std::string>());
      ASSERT_NE(t, nullptr);
      std::string what = m["file"].get<std::string>() + ":" + t->name;
      if (!want.contains("ref")) {
        // gguf-py gives no float reference (integer tensors): we must refuse too, naming file and tensor.
        EXPECT_FALSE(CanDequantize(t->type)) << what;
        absl::Status s = DequantizeToVector(*f, *t).status();
        EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
        EXPECT_NE(s.message().find(path), std::string::npos) << s;
        EXPECT_NE(s.message().find(t->name), std::string::npos) << s;
        continue;
      }
      ASSERT_TRUE(CanDequantize(t->type)) << what;
      covered.insert(t->type);
      std::vector<float> ref = ReadF32(kFixtures + "/synthetic/ref/" + want["ref"].get<std::string>());
      auto got = DequantizeToVector(*f, *t);
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectSameBits(*got, ref, what);
      EXPECT_EQ(Checksum(*got), want["checksum"].get<uint64_t>()) << what;

      // Every single row, and a range from the middle, into caller buffers.
      const uint64_t len = t->row_length();
      std::vector<float> row(len);
      for (uint64_t r = 0; r < t->num_rows(); ++r) {
        ASSERT_TRUE(DequantizeRows(*f, *t, r, 1, absl::MakeSpan(row)).ok());
        ExpectSameBits(row, absl::MakeConstSpan(ref).subspan(r * len, len), what + " row " + std::to_string(r));
      }
      if (t->num_rows() >= 3) {
        std::vector<float> mid(2 * len);
        ASSERT_TRUE(DequantizeRows(*f, *t, 1, 2, absl::MakeSpan(mid)).ok());
        ExpectSameBits(mid, absl::MakeConstSpan(ref).subspan(len, 2 * len), what + " rows 1..2");
      }
      // Zero rows is a valid, empty request.
      EXPECT_TRUE(DequantizeRows(*f, *t, t->num_rows(), 0, {}).ok());
    }
  }
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0, GgmlType::kQ4_0,
                        GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ2_K, GgmlType::kQ3_K,
                        GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    EXPECT_TRUE(covered.count(type)) << "no fixture tensor of type " << GgmlTypeName(type);
  }
}

TEST(GgufDequant, ErrorsNameFileAndTensor) {
  std::string path = kFixtures + "/synthetic/types.gguf";
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufTensorInfo* t = f->FindTensor("q4_k.2d");
  ASSERT_NE(t, nullptr);
  std::vector<float> buf(t->row_length() * 2);
  auto expect = [&](absl::Status s, absl::StatusCode code) {
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_NE(s.message().find(path), std::string::npos) << s;
    EXPECT_NE(s.message().find(t->name), std::string::npos) << s;
  };
  expect(DequantizeRows(*f, *t, t->num_rows(), 1, absl::MakeSpan(buf).subspan(0, t->row_length())),
         absl::StatusCode::kOutOfRange);
  expect(DequantizeRows(*f, *t, 1, ~uint64_t{0}, absl::MakeSpan(buf)), absl::StatusCode::kOutOfRange);
  expect(DequantizeRows(*f, *t, 0, 1, absl::MakeSpan(buf)), absl::StatusCode::kInvalidArgument);  // wrong size
  expect(DequantizeTensor(*f, *t, absl::MakeSpan(buf).subspan(1)), absl::StatusCode::kInvalidArgument);

  // An info that does not describe this file's bytes is refused before anything is read or allocated.
  GgufTensorInfo forged = *t;
  forged.file_offset = f->mapped_file()->size() - 1;
  expect(DequantizeToVector(*f, forged).status(), absl::StatusCode::kInvalidArgument);
  forged = *t;
  forged.dims = {256, uint64_t{1} << 40};
  forged.num_elements = uint64_t{256} << 40;
  expect(DequantizeToVector(*f, forged).status(), absl::StatusCode::kInvalidArgument);
  forged = *t;
  forged.type = GgmlType::kIQ2_XXS;
  expect(DequantizeToVector(*f, forged).status(), absl::StatusCode::kUnimplemented);
}

TEST(GgufDequant, BlocksApiChecksSizes) {
  std::vector<uint8_t> src(2 * 20, 0);
  std::vector<float> dst(64);
  EXPECT_TRUE(DequantizeBlocks(GgmlType::kQ4_1, src, absl::MakeSpan(dst)).ok());
  EXPECT_EQ(DequantizeBlocks(GgmlType::kQ4_1, absl::MakeConstSpan(src).subspan(1), absl::MakeSpan(dst)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeBlocks(GgmlType::kQ4_1, src, absl::MakeSpan(dst).subspan(1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeBlocks(GgmlType::kTQ2_0, {}, {}).code(), absl::StatusCode::kUnimplemented);
}

TEST(GgufDequant, HalfAndBFloat16ConversionsAreExactForAllPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const bool neg = (h & 0x8000) != 0;
    const int exp = (h >> 10) & 0x1f;
    const int mant = h & 0x3ff;
    float got = HalfToFloat(static_cast<uint16_t>(h));
    if (exp == 0x1f) {
      if (mant == 0) {
        EXPECT_TRUE(std::isinf(got) && std::signbit(got) == neg) << h;
      } else {
        // NaN with the payload moved to the top of the float mantissa.
        EXPECT_TRUE(std::isnan(got)) << h;
        EXPECT_EQ(std::bit_cast<uint32_t>(got) & 0x7fffffu, static_cast<uint32_t>(mant) << 13) << h;
      }
      continue;
    }
    // binary16 value by its definition, computed in double (exact), then narrowed (exact: float holds it).
    double magnitude = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
    double want = neg ? -magnitude : magnitude;
    EXPECT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(static_cast<float>(want))) << h;
  }
  for (uint32_t b = 0; b < 65536; ++b) {
    EXPECT_EQ(std::bit_cast<uint32_t>(BFloat16ToFloat(static_cast<uint16_t>(b))), b << 16);
  }
}

// ---- The real model ----

class GgufDequantSmolLM2 : public ::testing::Test {
 protected:
  void SetUp() override {
    m_ = LoadJson(kFixtures + "/smollm2.json");
    auto f = GgufFile::Open(m_["path"].get<std::string>());
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = std::make_unique<GgufFile>(*f);
  }
  json m_;
  std::unique_ptr<GgufFile> file_;
};

TEST_F(GgufDequantSmolLM2, EveryTensorMatchesGgufPyChecksumAndIsFinite) {
  uint64_t max_elements = 0, total = 0;
  for (const GgufTensorInfo& t : file_->tensors()) max_elements = std::max(max_elements, t.num_elements);
  std::vector<float> buf(max_elements, 1.0f);
  ASSERT_EQ(m_["tensors"].size(), file_->tensors().size());

  for (size_t i = 0; i < file_->tensors().size(); ++i) {
    const GgufTensorInfo& t = file_->tensors()[i];
    absl::Span<float> out = absl::MakeSpan(buf).subspan(0, t.num_elements);
    absl::Status s = DequantizeTensor(*file_, t, out);
    ASSERT_TRUE(s.ok()) << s;
    total += t.num_elements;
    const json& want = m_["tensors"][i];
    ASSERT_EQ(want["name"].get<std::string>(), t.name);
    EXPECT_EQ(Checksum(out), want["checksum"].get<uint64_t>()) << t.name;
    ASSERT_TRUE(want["finite"].get<bool>()) << t.name;
    bool finite = true;
    for (float x : out) finite = finite && std::isfinite(x);
    EXPECT_TRUE(finite) << t.name;
  }
  EXPECT_GT(total, 100'000'000u);
}

TEST_F(GgufDequantSmolLM2, ThreadedDecodeEqualsSingleThreaded) {
  // token_embd (28M values) and an ffn matrix are large enough to be split across threads.
  for (const char* name : {"token_embd.weight", "blk.3.ffn_down.weight"}) {
    const GgufTensorInfo* t = file_->FindTensor(name);
    ASSERT_NE(t, nullptr) << name;
    auto one = DequantizeToVector(*file_, *t);
    ASSERT_TRUE(one.ok()) << one.status();
    for (int threads : {0, 3, 8}) {
      DequantOptions options;
      options.num_threads = threads;
      auto many = DequantizeToVector(*file_, *t, options);
      ASSERT_TRUE(many.ok()) << many.status();
      ExpectSameBits(*many, *one, std::string(name) + " threads=" + std::to_string(threads));
    }
  }
}

TEST_F(GgufDequantSmolLM2, FullTensorsMatchGgufPyExactly) {
  int compared = 0;
  for (const json& want : m_["tensors"]) {
    if (!want.contains("ref")) continue;
    const GgufTensorInfo* t = file_->FindTensor(want["name"].get<std::string>());
    ASSERT_NE(t, nullptr);
    std::vector<float> ref = ReadF32(kFixtures + "/smollm2/" + want["ref"].get<std::string>());
    auto got = DequantizeToVector(*file_, *t);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSameBits(*got, ref, t->name);
    ++compared;
  }
  EXPECT_EQ(compared, 3);  // the fixture dumps token_embd (Q8_0), blk.0.attn_q (Q4_1), blk.0.attn_norm (F32)
}

}  // namespace
}  // namespace fm
