// ArtifactStore on real files in a temporary directory: attempt folders, promotion and its manifest (checked
// against coreutils' sha256sum), idempotence, chunked reads, path safety (traversal, symbolic links), uploads and
// discarding.
#include "server/artifacts/artifact_store.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/artifacts/artifact_manifest.h"
#include "server/artifacts/artifact_path.h"

namespace fm::server {
namespace {

namespace fs = std::filesystem;

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(rng() & 0xff);
  return s;
}

void WriteFile(const fs::path& path, std::string_view contents) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string ReadWholeFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs a shell command; returns its stdout and sets *rc to its exit status.
std::string Shell(const std::string& command, int* rc) {
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) {
    *rc = -1;
    return "";
  }
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int status = ::pclose(p);
  *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// coreutils' SHA-256 of a file's bytes.
std::string CoreutilsSha256(const fs::path& path) {
  int rc = 0;
  std::string out = Shell("sha256sum '" + path.string() + "'", &rc);
  EXPECT_EQ(rc, 0);
  return out.substr(0, 64);
}

std::string Sha256OfString(std::string_view s, const fs::path& scratch) {
  WriteFile(scratch, s);
  return CoreutilsSha256(scratch);
}

class ArtifactStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "artifact_store_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    auto store = ArtifactStore::Open((dir_ / "root" / "artifacts").string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }

  fs::path Root() const { return store_->root(); }
  fs::path JobDir(const std::string& id) const { return Root() / "jobs" / id; }

  // A model-like output: nested directories, a multi-MiB file, a name with a space.
  void WriteModel(const fs::path& out) {
    big_ = RandomBytes((3 << 20) + 123, 1);
    WriteFile(out / "model.safetensors", big_);
    WriteFile(out / "config.json", R"({"layer_types": ["full_attention", "linear_attention"]})");
    WriteFile(out / "tokenizer config.json", "{}\n");
    WriteFile(out / "sub" / "deeper" / "weights.bin", RandomBytes(70000, 2));
    WriteFile(out / "sub" / "a.txt", "");
    fs::create_directories(out / "empty_dir");
  }

  absl::StatusOr<ArtifactManifest> PrepareWriteAndPromote(const std::string& id, int attempt) {
    auto paths = store_->PrepareAttempt(id, attempt);
    if (!paths.ok()) return paths.status();
    WriteModel(paths->output_dir);
    return store_->Promote(id, attempt);
  }

  fs::path dir_;
  std::unique_ptr<ArtifactStore> store_;
  std::string big_;
};

TEST(ArtifactPathTest, ValidatesPaths) {
  for (const std::string& ok :
       std::vector<std::string>{"config.json", "a/b/c.bin", "with space.json", "ünïcode/файл", std::string(512, 'x'),
                                std::string("a/.hidden"), std::string("..a/b..")}) {
    EXPECT_TRUE(ValidateArtifactPath(ok).ok()) << ok;
  }
  for (std::string bad :
       {std::string(""), std::string("/etc/passwd"), std::string("../x"), std::string("a/../b"), std::string("a/.."),
        std::string("./a"), std::string("a/./b"), std::string("a//b"), std::string("a/"), std::string(513, 'x'),
        std::string("a\0b", 3), std::string("a\\b"), std::string("a\nb"), std::string("a\rb"), std::string("\xff\xfe"),
        std::string(".."), std::string(".")}) {
    absl::Status s = ValidateArtifactPath(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << EscapeForMessage(bad) << " " << s;
  }
}

TEST(ArtifactPathTest, ValidatesJobIds) {
  EXPECT_TRUE(ValidateJobId("abc123-x").ok());
  EXPECT_TRUE(ValidateJobId(std::string(64, 'a')).ok());
  for (std::string bad : {std::string(""), std::string(65, 'a'), std::string("ABC"), std::string("a/b"),
                          std::string(".."), std::string("a_b"), std::string("a b")}) {
    EXPECT_TRUE(absl::IsInvalidArgument(ValidateJobId(bad))) << bad;
  }
}

TEST(ArtifactManifestTest, IndexRoundTripAndCorruption) {
  ArtifactManifest m;
  auto* f = m.add_files();
  f->set_path("a b/c.json");
  f->set_size_bytes(12);
  f->set_sha256(std::string(64, 'a'));
  f = m.add_files();
  f->set_path("z");
  f->set_size_bytes(0);
  f->set_sha256(std::string(64, '0'));
  FinishArtifactManifest("job1", &m);
  std::string text = SerializeArtifactIndex(3, m);
  auto index = ParseArtifactIndex(text, "job1", "index");
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->attempt, 3);
  EXPECT_EQ(index->manifest.SerializeAsString(), m.SerializeAsString());
  EXPECT_EQ(m.job(), "jobs/job1");
  EXPECT_EQ(m.total_size_bytes(), 12);
  EXPECT_EQ(ArtifactManifestText(m), std::string(64, 'a') + "  a b/c.json\n" + std::string(64, '0') + "  z\n");
  // Truncations, bad numbers, unsorted paths, traversal: all DATA_LOSS.
  std::vector<std::string> corrupt = {
      "",
      text.substr(0, text.size() - 1),
      "flashmorph-artifact-index 2\n",
      "flashmorph-artifact-index 1\nattempt 0\n",
      "flashmorph-artifact-index 1\nattempt 1\n" + std::string(64, 'a') + " -1 x\n",
      "flashmorph-artifact-index 1\nattempt 1\n" + std::string(64, 'A') + " 1 x\n",
      "flashmorph-artifact-index 1\nattempt 1\n" + std::string(64, 'a') + " 1 ../x\n",
      "flashmorph-artifact-index 1\nattempt 1\n" + std::string(64, 'a') + " 1 b\n" + std::string(64, 'a') + " 1 a\n"};
  for (const std::string& c : corrupt) {
    auto r = ParseArtifactIndex(c, "job1", "index");
    EXPECT_TRUE(absl::IsDataLoss(r.status())) << EscapeForMessage(c) << " " << r.status();
  }
}

TEST_F(ArtifactStoreTest, PrepareAttemptCreatesAndResetsFolders) {
  auto paths = store_->PrepareAttempt("job1", 1);
  ASSERT_TRUE(paths.ok()) << paths.status();
  EXPECT_EQ(paths->output_dir, (JobDir("job1") / "attempts" / "1" / "output").string());
  EXPECT_EQ(paths->work_dir, (JobDir("job1") / "work").string());
  EXPECT_TRUE(fs::path(paths->output_dir).is_absolute());
  EXPECT_TRUE(fs::is_directory(paths->output_dir));
  EXPECT_TRUE(fs::is_empty(paths->output_dir));
  // A crashed try left files; the work folder keeps its checkpoints.
  WriteFile(fs::path(paths->output_dir) / "stale" / "x.bin", "stale");
  WriteFile(fs::path(paths->work_dir) / "stage1.ckpt", "checkpoint");
  auto again = store_->PrepareAttempt("job1", 1);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(fs::is_empty(again->output_dir));
  EXPECT_EQ(ReadWholeFile(fs::path(again->work_dir) / "stage1.ckpt"), "checkpoint");

  EXPECT_TRUE(absl::IsInvalidArgument(store_->PrepareAttempt("job1", 0).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->PrepareAttempt("../evil", 1).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->PrepareAttempt("Job", 1).status()));
  EXPECT_TRUE(store_->PrepareAttempt(std::string(64, '7'), 2).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(store_->PrepareAttempt(std::string(65, '7'), 2).status()));
}

TEST_F(ArtifactStoreTest, PromoteWritesManifestThatSha256sumAgreesWith) {
  auto manifest = PrepareWriteAndPromote("job1", 1);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  const fs::path artifact = JobDir("job1") / "artifact";
  EXPECT_TRUE(fs::is_directory(artifact));
  EXPECT_FALSE(fs::exists(JobDir("job1") / "attempts" / "1" / "output"));
  EXPECT_EQ(manifest->job(), "jobs/job1");

  // The artifact holds exactly the model's files; coreutils hashes them in path order to the same text.
  int rc = 0;
  std::string coreutils = Shell("cd '" + artifact.string() +
                                    "' && LC_ALL=C find . -type f -printf '%P\\n' | LC_ALL=C sort | "
                                    "xargs -d '\\n' sha256sum",
                                &rc);
  ASSERT_EQ(rc, 0);
  std::string text = ArtifactManifestText(*manifest);
  EXPECT_EQ(text, coreutils);
  EXPECT_EQ(ReadWholeFile(JobDir("job1") / "artifact.manifest"), text);
  EXPECT_EQ(manifest->manifest_sha256(), CoreutilsSha256(JobDir("job1") / "artifact.manifest"));
  Shell("cd '" + artifact.string() + "' && sha256sum --quiet --strict --check ../artifact.manifest", &rc);
  EXPECT_EQ(rc, 0);

  std::vector<std::string> paths;
  int64_t total = 0;
  for (const auto& f : manifest->files()) {
    paths.push_back(f.path());
    EXPECT_EQ(f.size_bytes(), static_cast<int64_t>(fs::file_size(artifact / f.path()))) << f.path();
    total += f.size_bytes();
  }
  EXPECT_EQ(paths, (std::vector<std::string>{"config.json", "model.safetensors", "sub/a.txt", "sub/deeper/weights.bin",
                                             "tokenizer config.json"}));
  EXPECT_EQ(manifest->total_size_bytes(), total);

  // GetManifest: the same, from this store's cache and from a fresh store reading the index.
  auto got = store_->GetManifest("job1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), manifest->SerializeAsString());
  auto reopened = ArtifactStore::Open(Root().string());
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  auto from_disk = (*reopened)->GetManifest("job1");
  ASSERT_TRUE(from_disk.ok()) << from_disk.status();
  EXPECT_EQ(from_disk->SerializeAsString(), manifest->SerializeAsString());

  EXPECT_TRUE(absl::IsNotFound(store_->GetManifest("job2").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->GetManifest("../job1").status()));
}

TEST_F(ArtifactStoreTest, PromoteIsIdempotentPerAttempt) {
  auto first = PrepareWriteAndPromote("job1", 2);
  ASSERT_TRUE(first.ok()) << first.status();
  auto again = store_->Promote("job1", 2);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->SerializeAsString(), first->SerializeAsString());
  // After a restart (crash between rename and the database commit) too.
  auto reopened = ArtifactStore::Open(Root().string());
  ASSERT_TRUE(reopened.ok());
  auto after_restart = (*reopened)->Promote("job1", 2);
  ASSERT_TRUE(after_restart.ok()) << after_restart.status();
  EXPECT_EQ(after_restart->SerializeAsString(), first->SerializeAsString());
  // Another attempt cannot replace the artifact.
  auto other = store_->PrepareAttempt("job1", 3);
  ASSERT_TRUE(other.ok());
  WriteFile(fs::path(other->output_dir) / "config.json", "{}");
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->Promote("job1", 3).status()));
  EXPECT_EQ(store_->GetManifest("job1")->SerializeAsString(), first->SerializeAsString());
}

TEST_F(ArtifactStoreTest, ReadsInChunks) {
  ASSERT_TRUE(PrepareWriteAndPromote("job1", 1).ok());
  const int64_t size = static_cast<int64_t>(big_.size());
  for (int64_t chunk : {int64_t{1} << 20, int64_t{1000003}, size, size + 10}) {
    std::string assembled;
    int64_t offset = 0;
    while (true) {
      auto part = store_->Read("job1", "model.safetensors", offset, chunk);
      ASSERT_TRUE(part.ok()) << part.status();
      if (part->empty()) break;
      EXPECT_LE(static_cast<int64_t>(part->size()), chunk);
      assembled += *part;
      offset += static_cast<int64_t>(part->size());
    }
    EXPECT_EQ(offset, size);
    EXPECT_TRUE(assembled == big_) << "chunk " << chunk;
  }
  auto middle = store_->Read("job1", "model.safetensors", (1 << 20) - 5, 10);
  ASSERT_TRUE(middle.ok());
  EXPECT_EQ(*middle, big_.substr((1 << 20) - 5, 10));
  auto last = store_->Read("job1", "model.safetensors", size - 1, 1 << 20);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(*last, big_.substr(size - 1));
  EXPECT_EQ(*store_->Read("job1", "model.safetensors", size, 1 << 20), "");
  EXPECT_EQ(*store_->Read("job1", "model.safetensors", 0, 0), "");
  EXPECT_EQ(*store_->Read("job1", "sub/a.txt", 0, 10), "");
  EXPECT_TRUE(absl::IsOutOfRange(store_->Read("job1", "model.safetensors", size + 1, 10).status()));
  EXPECT_TRUE(absl::IsOutOfRange(store_->Read("job1", "sub/a.txt", 1, 10).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->Read("job1", "model.safetensors", -1, 10).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->Read("job1", "model.safetensors", 0, -1).status()));
  // A huge limit is capped, never allocated.
  auto capped = store_->Read("job1", "model.safetensors", 0, int64_t{1} << 40);
  ASSERT_TRUE(capped.ok());
  EXPECT_EQ(static_cast<int64_t>(capped->size()), std::min(size, ArtifactFileReader::kMaxReadBytes));

  // One reader for a whole stream.
  auto reader = store_->OpenFile("job1", "sub/deeper/weights.bin");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->size(), 70000);
  EXPECT_EQ(*(*reader)->ReadAt(69990, 100), RandomBytes(70000, 2).substr(69990));
}

TEST_F(ArtifactStoreTest, ReadRefusesPathsOutsideTheManifest) {
  ASSERT_TRUE(PrepareWriteAndPromote("job1", 1).ok());
  for (std::string path : {"../x", "/etc/passwd", "../../../../../../etc/passwd", "nope.json", "sub", "", "sub/",
                           "./config.json", "sub/../config.json", "empty_dir", "../artifact.index", "config.json/"}) {
    EXPECT_TRUE(absl::IsNotFound(store_->Read("job1", path, 0, 100).status())) << path;
  }
  EXPECT_TRUE(absl::IsNotFound(store_->Read("job2", "config.json", 0, 100).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->Read("..", "config.json", 0, 100).status()));
}

TEST_F(ArtifactStoreTest, ReadDoesNotFollowSymlinksSwappedInLater) {
  ASSERT_TRUE(PrepareWriteAndPromote("job1", 1).ok());
  const fs::path artifact = JobDir("job1") / "artifact";
  // A file replaced by a link to a file outside.
  const fs::path outside = dir_ / "secret.txt";
  WriteFile(outside, std::string(fs::file_size(artifact / "config.json"), 's'));  // same size: only O_NOFOLLOW helps
  fs::remove(artifact / "config.json");
  fs::create_symlink(outside, artifact / "config.json");
  auto r = store_->Read("job1", "config.json", 0, 100);
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
  // A directory replaced by a link to a directory outside holding the same names.
  fs::create_directories(dir_ / "fake" / "deeper");
  WriteFile(dir_ / "fake" / "deeper" / "weights.bin", RandomBytes(70000, 3));
  fs::remove_all(artifact / "sub");
  fs::create_directory_symlink(dir_ / "fake", artifact / "sub");
  r = store_->Read("job1", "sub/deeper/weights.bin", 0, 100);
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
  // A file truncated behind the store's back.
  fs::resize_file(artifact / "model.safetensors", 10);
  EXPECT_TRUE(absl::IsDataLoss(store_->Read("job1", "model.safetensors", 0, 100).status()));
}

TEST_F(ArtifactStoreTest, PromotionRefusesLinksAndSpecialFiles) {
  auto paths = store_->PrepareAttempt("job1", 1);
  ASSERT_TRUE(paths.ok());
  const fs::path out = paths->output_dir;
  WriteFile(out / "config.json", "{}");
  fs::create_directories(out / "sub");
  fs::create_symlink("/etc/passwd", out / "sub" / "passwd");
  auto r = store_->Promote("job1", 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("sub/passwd"), std::string::npos) << r.status();
  EXPECT_TRUE(absl::IsNotFound(store_->GetManifest("job1").status()));
  EXPECT_TRUE(fs::exists(out / "config.json"));
  EXPECT_FALSE(fs::exists(JobDir("job1") / "artifact"));
  EXPECT_TRUE(absl::IsNotFound(store_->Read("job1", "sub/passwd", 0, 100).status()));

  // A link to a directory, even inside the output.
  fs::remove(out / "sub" / "passwd");
  fs::create_directory_symlink(out / "sub", out / "loop");
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->Promote("job1", 1).status()));
  fs::remove(out / "loop");
  // A FIFO (would block a naive reader).
  ASSERT_EQ(::mkfifo((out / "fifo").c_str(), 0644), 0);
  r = store_->Promote("job1", 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("fifo"), std::string::npos);
  fs::remove(out / "fifo");
  // A file name sha256sum would escape.
  WriteFile(out / "bad\\name", "x");
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->Promote("job1", 1).status()));
  fs::remove(out / "bad\\name");
  // The output folder itself replaced by a link.
  fs::rename(out, dir_ / "moved");
  fs::create_directory_symlink(dir_ / "moved", out);
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->Promote("job1", 1).status()));
  fs::remove(out);
  fs::rename(dir_ / "moved", out);
  auto ok = store_->Promote("job1", 1);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->files_size(), 1);  // config.json; sub/ is empty
}

TEST_F(ArtifactStoreTest, PromotionNeedsFiles) {
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->Promote("job1", 1).status()));  // no such job
  auto paths = store_->PrepareAttempt("job1", 1);
  ASSERT_TRUE(paths.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->Promote("job1", 2).status()));  // no such attempt
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->Promote("job1", 1).status()));  // empty
  fs::create_directories(fs::path(paths->output_dir) / "a" / "b");
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->Promote("job1", 1).status()));  // directories only
  EXPECT_TRUE(absl::IsNotFound(store_->GetManifest("job1").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->Promote("job1", -1).status()));
}

TEST_F(ArtifactStoreTest, CorruptIndexIsDataLoss) {
  ASSERT_TRUE(PrepareWriteAndPromote("job1", 1).ok());
  WriteFile(JobDir("job1") / "artifact.index", "garbage\n");
  auto reopened = ArtifactStore::Open(Root().string());
  ASSERT_TRUE(reopened.ok());
  EXPECT_TRUE(absl::IsDataLoss((*reopened)->GetManifest("job1").status()));
  fs::remove(JobDir("job1") / "artifact.index");
  auto again = ArtifactStore::Open(Root().string());
  EXPECT_TRUE(absl::IsDataLoss((*again)->GetManifest("job1").status()));
}

TEST_F(ArtifactStoreTest, UploadsLandInTheOutputOnlyWhenComplete) {
  auto paths = store_->PrepareAttempt("job1", 1);
  ASSERT_TRUE(paths.ok());
  const fs::path out = paths->output_dir;
  const fs::path uploads = JobDir("job1") / "attempts" / "1" / "uploads";
  const std::string data = RandomBytes((2 << 20) + 7, 5);
  const std::string sha = Sha256OfString(data, dir_ / "scratch");

  auto up = store_->BeginUpload("job1", 1, "shards/model-00001.safetensors");
  ASSERT_TRUE(up.ok()) << up.status();
  int64_t off = 0;
  for (size_t pos = 0; pos < data.size(); pos += 1 << 20) {
    std::string_view chunk = std::string_view(data).substr(pos, 1 << 20);
    ASSERT_TRUE((*up)->Append(off, chunk).ok());
    off += static_cast<int64_t>(chunk.size());
    EXPECT_TRUE(absl::IsInvalidArgument((*up)->Append(off + 1, "x"))) << "gap";
    EXPECT_TRUE(absl::IsInvalidArgument((*up)->Append(0, "x"))) << "overlap";
  }
  EXPECT_EQ((*up)->bytes_written(), static_cast<int64_t>(data.size()));
  EXPECT_FALSE(fs::exists(out / "shards" / "model-00001.safetensors"));  // not before Finish
  ASSERT_TRUE((*up)->Finish(sha).ok());
  EXPECT_TRUE(ReadWholeFile(out / "shards" / "model-00001.safetensors") == data);
  EXPECT_TRUE(absl::IsFailedPrecondition((*up)->Append(off, "x")));
  EXPECT_TRUE(absl::IsFailedPrecondition((*up)->Finish(sha)));

  // Wrong SHA-256: DATA_LOSS, nothing left anywhere.
  auto bad = store_->BeginUpload("job1", 1, "config.json");
  ASSERT_TRUE(bad.ok());
  ASSERT_TRUE((*bad)->Append(0, "{}").ok());
  absl::Status s = (*bad)->Finish(Sha256OfString("{ }", dir_ / "scratch"));
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_FALSE(fs::exists(out / "config.json"));
  EXPECT_TRUE(fs::is_empty(uploads));
  // Malformed SHA-256.
  bad = store_->BeginUpload("job1", 1, "config.json");
  ASSERT_TRUE(bad.ok());
  ASSERT_TRUE((*bad)->Append(0, "{}").ok());
  EXPECT_TRUE(absl::IsInvalidArgument((*bad)->Finish(std::string(64, 'A'))));
  EXPECT_TRUE(fs::is_empty(uploads));
  // A broken stream: the destroyed upload removes its temporary file.
  {
    auto broken = store_->BeginUpload("job1", 1, "config.json");
    ASSERT_TRUE(broken.ok());
    ASSERT_TRUE((*broken)->Append(0, "{\"partial").ok());
    EXPECT_FALSE(fs::is_empty(uploads));
  }
  EXPECT_TRUE(fs::is_empty(uploads));
  EXPECT_FALSE(fs::exists(out / "config.json"));
  // Uploading again replaces the earlier file; an empty file is fine.
  for (std::string content : {"{\"a\": 1}", "{}"}) {
    auto again = store_->BeginUpload("job1", 1, "config.json");
    ASSERT_TRUE(again.ok());
    ASSERT_TRUE((*again)->Append(0, content).ok());
    ASSERT_TRUE((*again)->Finish(Sha256OfString(content, dir_ / "scratch")).ok());
    EXPECT_EQ(ReadWholeFile(out / "config.json"), content);
  }
  auto empty = store_->BeginUpload("job1", 1, "empty.txt");
  ASSERT_TRUE(empty.ok());
  ASSERT_TRUE((*empty)->Finish(Sha256OfString("", dir_ / "scratch")).ok());
  // A path that collides with a directory.
  auto collide = store_->BeginUpload("job1", 1, "shards");
  ASSERT_TRUE(collide.ok());
  ASSERT_TRUE((*collide)->Append(0, "x").ok());
  EXPECT_TRUE(absl::IsFailedPrecondition((*collide)->Finish(Sha256OfString("x", dir_ / "scratch"))));
  EXPECT_TRUE(fs::is_empty(uploads));

  // The uploads folder is not part of the artifact.
  auto manifest = store_->Promote("job1", 1);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ASSERT_EQ(manifest->files_size(), 3);
  EXPECT_EQ(manifest->files(0).path(), "config.json");
  EXPECT_EQ(manifest->files(1).path(), "empty.txt");
  EXPECT_EQ(manifest->files(2).path(), "shards/model-00001.safetensors");
  EXPECT_EQ(manifest->files(2).sha256(), sha);
  // The output is gone: no more uploads into it.
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->BeginUpload("job1", 1, "late.txt").status()));
}

TEST_F(ArtifactStoreTest, UploadRefusesBadPathsAndUnpreparedAttempts) {
  ASSERT_TRUE(store_->PrepareAttempt("job1", 1).ok());
  for (std::string bad : {std::string(""), std::string("/etc/passwd"), std::string("../x"), std::string("a/../../x"),
                          std::string("a//b"), std::string("./a"), std::string("a/."), std::string("a/"),
                          std::string(513, 'x'), std::string("a\0b", 3), std::string("a\nb")}) {
    auto up = store_->BeginUpload("job1", 1, bad);
    EXPECT_TRUE(absl::IsInvalidArgument(up.status())) << EscapeForMessage(bad) << " " << up.status();
  }
  EXPECT_TRUE(store_->BeginUpload("job1", 1, std::string(512, 'x')).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->BeginUpload("job1", 2, "a").status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->BeginUpload("job2", 1, "a").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->BeginUpload("job1", 0, "a").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->BeginUpload("JOB", 1, "a").status()));
  // A link planted in the output does not redirect an upload outside it.
  const fs::path out = JobDir("job1") / "attempts" / "1" / "output";
  fs::create_directories(dir_ / "elsewhere");
  fs::create_directory_symlink(dir_ / "elsewhere", out / "linked");
  auto up = store_->BeginUpload("job1", 1, "linked/x.txt");
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Append(0, "x").ok());
  EXPECT_TRUE(absl::IsFailedPrecondition((*up)->Finish(Sha256OfString("x", dir_ / "scratch"))));
  EXPECT_TRUE(fs::is_empty(dir_ / "elsewhere"));
}

TEST_F(ArtifactStoreTest, DiscardAndRemove) {
  auto paths = store_->PrepareAttempt("job1", 1);
  ASSERT_TRUE(paths.ok());
  WriteFile(fs::path(paths->output_dir) / "a" / "b.bin", "data");
  // Links inside are removed, never followed.
  fs::create_directories(dir_ / "keep");
  WriteFile(dir_ / "keep" / "precious", "keep me");
  fs::create_directory_symlink(dir_ / "keep", fs::path(paths->output_dir) / "link");
  auto open_upload = store_->BeginUpload("job1", 1, "late.bin");
  ASSERT_TRUE(open_upload.ok());
  ASSERT_TRUE((*open_upload)->Append(0, "x").ok());

  ASSERT_TRUE(store_->DiscardAttempt("job1", 1).ok());
  EXPECT_FALSE(fs::exists(JobDir("job1") / "attempts" / "1"));
  EXPECT_EQ(ReadWholeFile(dir_ / "keep" / "precious"), "keep me");
  EXPECT_FALSE((*open_upload)->Finish(Sha256OfString("x", dir_ / "scratch")).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->BeginUpload("job1", 1, "a").status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->Promote("job1", 1).status()));
  EXPECT_TRUE(store_->DiscardAttempt("job1", 1).ok());  // already gone
  EXPECT_TRUE(store_->DiscardAttempt("nojob", 1).ok());
  EXPECT_TRUE(fs::is_directory(paths->work_dir));  // the work folder is the job's, not the attempt's

  ASSERT_TRUE(PrepareWriteAndPromote("job1", 2).ok());
  ASSERT_TRUE(store_->GetManifest("job1").ok());
  ASSERT_TRUE(store_->RemoveJob("job1").ok());
  EXPECT_FALSE(fs::exists(JobDir("job1")));
  EXPECT_TRUE(absl::IsNotFound(store_->GetManifest("job1").status()));
  EXPECT_TRUE(absl::IsNotFound(store_->Read("job1", "config.json", 0, 10).status()));
  EXPECT_TRUE(store_->RemoveJob("job1").ok());
  EXPECT_TRUE(absl::IsInvalidArgument(store_->RemoveJob("..")));
}

}  // namespace
}  // namespace fm::server
