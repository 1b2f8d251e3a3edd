// The safetensors reader on files written by the Python `safetensors` library (fixtures from
// tests/parity/make_safetensors_fixtures.py): names, dtypes, shapes, byte ranges, metadata and the sha256 of every
// tensor's bytes must match what Python recorded.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tests/unit/safetensors_test_util.h"
#include "worker/engine/formats/safetensors.h"
#include "worker/engine/formats/sha256.h"

namespace fm {
namespace {

using ::fm::testing::Fixture;
using ::fm::testing::LoadJson;

TEST(Sha256, MatchesHashlib) {
  for (const auto& v : LoadJson(Fixture("sha256_vectors.json"))) {
    const size_t n = v["length"].get<size_t>();
    std::string data(n, '\0');
    for (size_t i = 0; i < n; ++i) data[i] = static_cast<char>((i * 131 + 7) & 0xFF);
    EXPECT_EQ(Sha256Hex(data.data(), n), v["sha256"].get<std::string>()) << "length " << n;
    // Incremental updates in uneven pieces give the same digest.
    Sha256 h;
    for (size_t i = 0, step = 1; i < n; i += step, step = step * 2 + 1) {
      h.Update(data.data() + i, std::min(step, n - i));
    }
    EXPECT_EQ(h.HexDigest(), v["sha256"].get<std::string>()) << "length " << n;
  }
}

TEST(SafetensorsReader, ReadsPythonWrittenFile) {
  const nlohmann::json expected = LoadJson(Fixture("basic.json"));
  auto file = SafetensorsFile::Open(Fixture("basic.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->data_start(), 8 + expected["header_len"].get<uint64_t>());
  EXPECT_EQ(file->data_start() % 8, 0u);

  ASSERT_TRUE(file->has_metadata());
  SafetensorsMetadata want_meta;
  for (const auto& [k, v] : expected["metadata"].items()) want_meta[k] = v.get<std::string>();
  EXPECT_EQ(file->metadata(), want_meta);

  const auto& want = expected["tensors"];
  ASSERT_EQ(file->tensors().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const SafetensorsTensorInfo& t = file->tensors()[i];
    const std::string name = want[i]["name"].get<std::string>();
    SCOPED_TRACE(name);
    EXPECT_EQ(t.name, name);  // file order
    EXPECT_EQ(DTypeName(t.dtype), want[i]["dtype"].get<std::string>());
    EXPECT_EQ(t.shape, want[i]["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.begin, want[i]["data_offsets"][0].get<uint64_t>());
    EXPECT_EQ(t.end, want[i]["data_offsets"][1].get<uint64_t>());
    ASSERT_EQ(file->Find(name), &t);
    auto view = file->View(name);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->dtype, t.dtype);
    EXPECT_EQ(view->shape, t.shape);
    EXPECT_EQ(view->nbytes, t.nbytes());
    EXPECT_EQ(static_cast<const uint8_t*>(view->data), file->file()->data() + file->data_start() + t.begin);
    EXPECT_EQ(Sha256Hex(view->data, view->nbytes), want[i]["sha256"].get<std::string>());
  }
}

TEST(SafetensorsReader, FileWithoutMetadata) {
  auto file = SafetensorsFile::Open(Fixture("basic_nometa.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_FALSE(file->has_metadata());
  EXPECT_TRUE(file->metadata().empty());
  EXPECT_EQ(file->tensors().size(), LoadJson(Fixture("basic.json"))["tensors"].size());
}

TEST(SafetensorsReader, ViewsOutliveTheFileObject) {
  std::shared_ptr<const MappedFile> mapping;
  TensorView view{};
  {
    auto file = SafetensorsFile::Open(Fixture("basic.safetensors"));
    ASSERT_TRUE(file.ok()) << file.status();
    auto v = file->View("i64");
    ASSERT_TRUE(v.ok());
    view = *v;
    mapping = file->file();
  }
  // The mapping is still alive through the shared_ptr: the bytes are readable and still the same.
  const nlohmann::json expected = LoadJson(Fixture("basic.json"));
  for (const auto& t : expected["tensors"]) {
    if (t["name"] != "i64") continue;
    EXPECT_EQ(Sha256Hex(view.data, view.nbytes), t["sha256"].get<std::string>());
  }
}

TEST(SafetensorsReader, MissingFileAndTensorAreNotFound) {
  auto missing = SafetensorsFile::Open(Fixture("no_such_file.safetensors"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no_such_file.safetensors"), std::string::npos);

  auto file = SafetensorsFile::Open(Fixture("basic.safetensors"));
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->Find("nope"), nullptr);
  auto v = file->View("nope");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(v.status().message().find("'nope'"), std::string::npos);
  EXPECT_NE(v.status().message().find("basic.safetensors"), std::string::npos);
}

TEST(SafetensorsReader, DirectoryOrFifoIsNotAFile) {
  auto dir = SafetensorsFile::Open(Fixture("llama_sharded"));
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);
  // A FIFO without a writer must be rejected at once, not block the open.
  testing::TempDir tmp;
  ASSERT_EQ(::mkfifo((tmp / "pipe").c_str(), 0600), 0);
  auto fifo = SafetensorsFile::Open(tmp / "pipe");
  ASSERT_FALSE(fifo.ok());
  EXPECT_EQ(fifo.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(fifo.status().message().find("pipe"), std::string::npos);
}

}  // namespace
}  // namespace fm
