// Malformed safetensors files, built byte by byte here, one test per defect: each must be rejected with the right
// status code and a message naming the file and the offending tensor. Ends with a mutation fuzz test.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <random>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "tests/unit/safetensors_test_util.h"
#include "worker/engine/formats/mapped_file.h"
#include "worker/engine/formats/safetensors.h"
#include "worker/engine/formats/safetensors_writer.h"

namespace fm {
namespace {

using ::fm::testing::StFile;

// `"name":{"dtype":..,"shape":..,"data_offsets":[b,e]}`
std::string Entry(std::string_view name, std::string_view dtype, std::string_view shape, uint64_t begin,
                  uint64_t end) {
  return "\"" + std::string(name) + "\":{\"dtype\":\"" + std::string(dtype) + "\",\"shape\":" + std::string(shape) +
         ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

std::string CurrentFileName() {
  return std::string("corpus/") + ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".safetensors";
}

// Parses `bytes` as a file named after the current test; it must fail with `code` and mention the file and
// each of `mentions`.
::testing::AssertionResult Rejected(std::string bytes, absl::StatusCode code,
                                    std::initializer_list<std::string_view> mentions = {}) {
  const std::string name = CurrentFileName();
  auto parsed = SafetensorsFile::Parse(MappedFile::FromBytes(std::move(bytes), name));
  if (parsed.ok()) return ::testing::AssertionFailure() << "parsed without error";
  const absl::Status& s = parsed.status();
  if (s.code() != code) {
    return ::testing::AssertionFailure() << "code " << absl::StatusCodeToString(s.code()) << ", want "
                                         << absl::StatusCodeToString(code) << ": " << s.message();
  }
  std::string_view msg(s.message().data(), s.message().size());
  if (msg.find(name) == std::string_view::npos) return ::testing::AssertionFailure() << "no file name in: " << msg;
  for (std::string_view m : mentions) {
    if (msg.find(m) == std::string_view::npos) {
      return ::testing::AssertionFailure() << "'" << m << "' not in: " << msg;
    }
  }
  return ::testing::AssertionSuccess() << msg;
}

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr auto kDataLoss = absl::StatusCode::kDataLoss;

TEST(SafetensorsCorrupt, EmptyFile) { EXPECT_TRUE(Rejected("", kDataLoss)); }

TEST(SafetensorsCorrupt, TruncatedLengthPrefix) {
  EXPECT_TRUE(Rejected(std::string("\x02\x00\x00\x00\x00", 5), kDataLoss));
}

TEST(SafetensorsCorrupt, HeaderLengthPastEndOfFile) {
  EXPECT_TRUE(Rejected(StFile("{}", "", /*declared_len=*/100), kDataLoss, {"100"}));
}

TEST(SafetensorsCorrupt, HeaderLargerThan100MB) {
  // Declared only: the file itself is 10 bytes, nothing of that size is allocated.
  EXPECT_TRUE(Rejected(StFile("{}", "", 100'000'001), kInvalid, {"100000001"}));
  EXPECT_TRUE(Rejected(std::string(8, '\xff') + "{}", kInvalid, {"18446744073709551615"}));  // 2^64 - 1
}

TEST(SafetensorsCorrupt, InvalidJson) {
  EXPECT_TRUE(Rejected(StFile("{\"w\":{\"dtype\":F32}}  "), kInvalid, {"'w'"}));
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w", "F32", "[1]", 0, 4), std::string(4, '\0')), kInvalid, {"'w'"}));
}

TEST(SafetensorsCorrupt, NonObjectJson) {
  EXPECT_TRUE(Rejected(StFile("[1,2]   "), kInvalid));
  EXPECT_TRUE(Rejected(StFile("\"w\"    "), kInvalid));
  EXPECT_TRUE(Rejected(StFile(" {}     "), kInvalid));  // the spec: the header starts with '{'
}

TEST(SafetensorsCorrupt, TrailingBytesAfterObject) {
  EXPECT_TRUE(Rejected(StFile("{}x     "), kInvalid));
  EXPECT_TRUE(Rejected(StFile("{}\n     "), kInvalid));              // only spaces pad the header
  EXPECT_TRUE(Rejected(StFile(std::string("{}\0}    ", 8)), kInvalid));  // NUL must not end the JSON early
}

TEST(SafetensorsCorrupt, DuplicateKey) {
  std::string e = Entry("w", "U8", "[1]", 0, 1);
  EXPECT_TRUE(Rejected(StFile("{" + e + "," + e + "}", "x"), kInvalid, {"duplicate", "'w'"}));
  EXPECT_TRUE(Rejected(
      StFile("{\"w\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "x"), kInvalid,
      {"duplicate", "'w'", "dtype"}));
}

TEST(SafetensorsCorrupt, UnknownDtype) {
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w", "F12", "[1]", 0, 4) + "}", "abcd"), kInvalid, {"'w'", "F12"}));
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w", "f32", "[1]", 0, 4) + "}", "abcd"), kInvalid, {"'w'"}));
}

TEST(SafetensorsCorrupt, NegativeDim) {
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w", "F32", "[2,-1]", 0, 0) + "}"), kInvalid, {"'w'", "shape[1]"}));
}

TEST(SafetensorsCorrupt, NonIntegerDim) {
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w", "U8", "[1.0]", 0, 1) + "}", "x"), kInvalid, {"'w'"}));
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w", "U8", "[\"1\"]", 0, 1) + "}", "x"), kInvalid, {"'w'"}));
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w", "U8", "[[1]]", 0, 1) + "}", "x"), kInvalid, {"'w'"}));
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w", "U8", "[[[[1]]]]", 0, 1) + "}", "x"), kInvalid, {"'w'"}));
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w", "U8", "[9223372036854775808]", 0, 1) + "}", "x"), kInvalid, {"'w'"}));
}

TEST(SafetensorsCorrupt, ShapeByteCountMismatch) {
  EXPECT_TRUE(
      Rejected(StFile("{" + Entry("w", "F32", "[2]", 0, 4) + "}", "abcd"), kInvalid, {"'w'", "needs 8 bytes"}));
}

TEST(SafetensorsCorrupt, OffsetsOverlap) {
  std::string h = "{" + Entry("a", "F32", "[2]", 0, 8) + "," + Entry("b", "F32", "[2]", 4, 12) + "}";
  EXPECT_TRUE(Rejected(StFile(h, std::string(12, 'x')), kInvalid, {"'b'", "overlap", "'a'"}));
}

TEST(SafetensorsCorrupt, ZeroLengthTensorInsideAnother) {
  std::string h = "{" + Entry("a", "F32", "[2]", 0, 8) + "," + Entry("z", "F32", "[0]", 4, 4) + "}";
  EXPECT_TRUE(Rejected(StFile(h, std::string(8, 'x')), kInvalid, {"'z'", "overlap"}));
}

TEST(SafetensorsCorrupt, GapBetweenTensors) {
  std::string h = "{" + Entry("a", "F32", "[1]", 0, 4) + "," + Entry("b", "F32", "[1]", 8, 12) + "}";
  EXPECT_TRUE(Rejected(StFile(h, std::string(12, 'x')), kInvalid, {"'b'", "[4,8)"}));
}

TEST(SafetensorsCorrupt, DataNotStartingAtZero) {
  EXPECT_TRUE(Rejected(StFile("{" + Entry("a", "F32", "[1]", 4, 8) + "}", std::string(8, 'x')), kInvalid,
                       {"'a'", "[0,4)"}));
}

TEST(SafetensorsCorrupt, LastEndShortOfFileEnd) {
  EXPECT_TRUE(Rejected(StFile("{" + Entry("a", "F32", "[1]", 0, 4) + "}", std::string(8, 'x')), kInvalid,
                       {"'a'", "8 bytes"}));
}

TEST(SafetensorsCorrupt, DataWithoutTensors) { EXPECT_TRUE(Rejected(StFile("{}      ", "abc"), kInvalid)); }

TEST(SafetensorsCorrupt, LastEndPastFileEnd) {
  EXPECT_TRUE(
      Rejected(StFile("{" + Entry("a", "F32", "[2]", 0, 8) + "}", std::string(4, 'x')), kDataLoss, {"'a'", "[0,8]"}));
}

TEST(SafetensorsCorrupt, BeginAfterEnd) {
  EXPECT_TRUE(
      Rejected(StFile("{" + Entry("a", "U8", "[4]", 8, 4) + "}", std::string(8, 'x')), kInvalid, {"'a'", "[8,4]"}));
}

TEST(SafetensorsCorrupt, MetadataNotStringToString) {
  std::string e = Entry("w", "U8", "[1]", 0, 1);
  EXPECT_TRUE(Rejected(StFile("{\"__metadata__\":{\"format\":\"pt\",\"k\":1}," + e + "}", "x"), kInvalid,
                       {"__metadata__", "'k'"}));
  EXPECT_TRUE(Rejected(StFile("{\"__metadata__\":{\"k\":{\"a\":\"b\"}}," + e + "}", "x"), kInvalid,
                       {"__metadata__", "'k'"}));
  EXPECT_TRUE(Rejected(StFile("{\"__metadata__\":[\"pt\"]," + e + "}", "x"), kInvalid, {"__metadata__"}));
}

TEST(SafetensorsCorrupt, DimsProductOverflows) {
  // 2^32 * 2^32 overflows 64 bits; 2^62 F32 elements overflow the byte count.
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w", "U8", "[4294967296,4294967296,0]", 0, 0) + "}"), kInvalid,
                       {"'w'", "overflow"}));
  EXPECT_TRUE(
      Rejected(StFile("{" + Entry("w", "F32", "[4611686018427387904]", 0, 0) + "}"), kInvalid, {"'w'", "overflow"}));
}

TEST(SafetensorsCorrupt, EntryFieldDefects) {
  EXPECT_TRUE(Rejected(StFile("{\"w\":[1]}"), kInvalid, {"'w'", "object"}));
  EXPECT_TRUE(Rejected(StFile("{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", "x"), kInvalid, {"'w'", "data_offsets"}));
  EXPECT_TRUE(Rejected(StFile("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":1}}", "x"),
                       kInvalid, {"'w'", "'x'"}));
  EXPECT_TRUE(Rejected(StFile("{\"w\":{\"dtype\":8,\"shape\":[1],\"data_offsets\":[0,1]}}", "x"), kInvalid,
                       {"'w'", "dtype"}));
  EXPECT_TRUE(Rejected(StFile("{\"w\":{\"dtype\":\"U8\",\"shape\":1,\"data_offsets\":[0,1]}}", "x"), kInvalid,
                       {"'w'", "shape"}));
  EXPECT_TRUE(Rejected(StFile("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,1]}}", "x"), kInvalid,
                       {"'w'", "data_offsets"}));
  EXPECT_TRUE(Rejected(StFile("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", "x"), kInvalid,
                       {"'w'", "data_offsets"}));
}

TEST(SafetensorsCorrupt, InvalidUtf8InHeader) {
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w\xC0\xAF", "U8", "[1]", 0, 1) + "}", "x"), kInvalid, {"UTF-8"}));
  EXPECT_TRUE(Rejected(StFile("{" + Entry("w\xED\xA0\x80", "U8", "[1]", 0, 1) + "}", "x"), kInvalid, {"UTF-8"}));
}

// Zero-length tensors, scalars and an empty file are legal; check the accepted edge cases next to the rejected ones.
TEST(SafetensorsCorrupt, LegalEdgeCasesParse) {
  std::string h = "{" + Entry("a", "F32", "[0,5]", 0, 0) + "," + Entry("s", "I16", "[]", 0, 2) + "," +
                  Entry("z", "BOOL", "[3,0]", 2, 2) + "}";
  auto f = SafetensorsFile::Parse(MappedFile::FromBytes(StFile(h, "ab"), "edge.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->tensors()[0].name, "a");
  EXPECT_EQ(f->tensors()[1].name, "s");
  EXPECT_EQ(f->tensors()[2].name, "z");
  EXPECT_TRUE(f->tensors()[1].shape.empty());
  EXPECT_EQ(f->tensors()[1].numel, 1u);
  EXPECT_EQ(f->View(f->tensors()[2]).nbytes, 0u);
  EXPECT_NE(f->View(f->tensors()[2]).data, nullptr);

  auto empty = SafetensorsFile::Parse(MappedFile::FromBytes(StFile("{}      "), "empty.safetensors"));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->tensors().empty());
  EXPECT_FALSE(empty->has_metadata());
}

// Deterministic mutations of a valid file: every parse must return (no crash, no out-of-bounds read under ASan),
// and every file that parses must satisfy the reader's promises.
TEST(SafetensorsCorrupt, MutationFuzzNeverCrashes) {
  std::vector<uint8_t> a(24, 7), b(6, 1);
  std::vector<TensorToWrite> tensors = {
      {"layer.0.w", DType::kF32, {2, 3}, a.data(), 24},
      {"layer.0.b", DType::kBF16, {3}, b.data(), 6},
      {"empty", DType::kF16, {0, 4}, nullptr, 0},
      {"s", DType::kU8, {}, b.data(), 1},
  };
  auto base = SerializeSafetensors(tensors, SafetensorsMetadata{{"format", "pt"}, {"k", "v"}});
  ASSERT_TRUE(base.ok()) << base.status();
  const size_t header_end = 8 + static_cast<uint8_t>((*base)[0]);
  ASSERT_TRUE(SafetensorsFile::Parse(MappedFile::FromBytes(*base, "base")).ok());

  std::mt19937_64 rng(20261128);
  const std::string_view kJsonBytes = "{}[]\",:-.0123456789eE tfnul\\";
  int parsed_ok = 0, rejected = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::string m = *base;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits && !m.empty(); ++e) {
      const size_t pos = rng() % m.size();
      const size_t in_header = 8 + rng() % (header_end - 8);
      switch (rng() % 8) {
        case 0: m[pos] = static_cast<char>(rng()); break;                                    // any byte anywhere
        case 1: if (in_header < m.size()) m[in_header] = kJsonBytes[rng() % kJsonBytes.size()]; break;
        case 2: m.resize(rng() % (m.size() + 1)); break;                                     // truncate
        case 3: m.insert(in_header < m.size() ? in_header : m.size(), 1, kJsonBytes[rng() % kJsonBytes.size()]); break;
        case 4: if (in_header < m.size()) m.erase(in_header, 1 + rng() % 4); break;
        case 5: if (m.size() >= 8) m[rng() % 8] = static_cast<char>(rng()); break;           // length prefix
        case 6: if (in_header + 1 < m.size() && m[in_header] >= '0' && m[in_header] <= '8') ++m[in_header]; break;
        case 7: m.append(rng() % 16, static_cast<char>(rng())); break;
      }
    }
    auto f = SafetensorsFile::Parse(MappedFile::FromBytes(m, "fuzz"));
    if (!f.ok()) {
      ++rejected;
      EXPECT_TRUE(f.status().code() == absl::StatusCode::kInvalidArgument ||
                  f.status().code() == absl::StatusCode::kDataLoss)
          << f.status();
      continue;
    }
    ++parsed_ok;
    // Promises: tensors tile the data section in order, and every view lies inside the mapping.
    uint64_t covered = 0;
    const uint8_t* lo = f->file()->data();
    const uint8_t* hi = lo + f->file()->size();
    for (const SafetensorsTensorInfo& t : f->tensors()) {
      ASSERT_EQ(t.begin, covered);
      covered = t.end;
      TensorView v = f->View(t);
      const auto* p = static_cast<const uint8_t*>(v.data);
      ASSERT_TRUE(p >= lo && p + v.nbytes <= hi);
      ASSERT_EQ(v.nbytes, t.numel * DTypeSize(t.dtype));
      unsigned sum = 0;
      for (size_t i = 0; i < v.nbytes; ++i) sum += p[i];
      (void)sum;
    }
    EXPECT_EQ(f->data_start() + covered, f->file()->size());
  }
  std::printf("mutations: %d parsed, %d rejected\n", parsed_ok, rejected);
  EXPECT_GT(rejected, 0);
  EXPECT_GT(parsed_ok, 0);  // some mutations (e.g. in tensor bytes) leave the file valid
}

}  // namespace
}  // namespace fm
