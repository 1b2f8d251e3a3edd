// Incremental inference of a hybrid (MorphableModel::ForwardCached): a prefill followed by one-token and chunked
// steps, with KV caches for the softmax heads and recurrent states for the branches, gives the logits of one full
// recompute, for every branch kind and every layer mode; the pre-allocated KV cache (KvCache::capacity) equals the
// concatenating one; bad inputs are rejected. On the demo model in float32.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "tests/torch/test_util.h"
#include "worker/engine/model/weight_loader.h"
#include "worker/engine/morph/linear_branch.h"
#include "worker/engine/morph/morphable_model.h"

namespace fm {
namespace {

const char* kDemo = FM_SOURCE_DIR "/models/demo/qwen3-demo";
constexpr double kTolerance = 1e-4;

class HybridDecodeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto d = LoadDecoder(kDemo);  // float32
    ASSERT_TRUE(d.ok()) << d.status();
    teacher_ = d->release();
  }
  static void TearDownTestSuite() {
    delete teacher_;
    teacher_ = nullptr;
  }
  std::vector<LinearBranch> Branches(BranchKind kind) {
    std::vector<LinearBranch> b;
    BranchSettings s;
    s.kind = kind;
    s.chunk_size = 16;
    for (int64_t l = 0; l < teacher_->config().num_layers; ++l)
      b.push_back(LinearBranch::FromTeacher(teacher_->config(), teacher_->weights().layers[l], l, s, 7));
    return b;
  }
  at::Tensor Ids(int64_t B, int64_t T, int64_t seed) {
    at::manual_seed(seed);
    return at::randint(0, teacher_->config().vocab_size, {B, T}, at::kLong);
  }
  // Logits of every position, fed to ForwardCached in pieces of the given lengths.
  at::Tensor PiecewiseLogits(const MorphableModel& m, const std::vector<LayerMix>& mixes, const at::Tensor& ids,
                             const std::vector<int64_t>& lengths, HybridCache& cache) {
    std::vector<at::Tensor> pieces;
    int64_t pos = 0;
    for (int64_t len : lengths) {
      absl::StatusOr<at::Tensor> x = m.ForwardCached(ids.narrow(1, pos, len), mixes, &cache);
      EXPECT_TRUE(x.ok()) << x.status();
      if (!x.ok()) return {};
      pieces.push_back(teacher_->Head(*x));
      pos += len;
    }
    EXPECT_EQ(pos, ids.size(1));
    EXPECT_EQ(cache.length(), pos);
    return at::cat(pieces, 1);
  }
  static Decoder* teacher_;
};
Decoder* HybridDecodeTest::teacher_ = nullptr;

// Every layer mode in one model: linear, full, head-level mix (2 of 4 heads softmax), sliding window.
std::vector<LayerMix> MixedLayout(int64_t L, int64_t H) {
  std::vector<std::vector<int64_t>> heads(L);
  std::vector<int64_t> all(H);
  for (int64_t h = 0; h < H; ++h) all[h] = h;
  heads[1] = all;
  heads[3] = {0, 2};
  heads[6] = all;
  std::vector<LayerMix> mixes = LayoutMixes(heads, H);
  mixes[4].mode = LayerMix::Mode::kSlidingWindow;
  mixes[4].window = 6;
  return mixes;
}

TEST_F(HybridDecodeTest, PrefillThenDecodingEqualsTheFullRecompute) {
  const int64_t L = teacher_->config().num_layers, H = teacher_->config().num_heads;
  ASSERT_EQ(L, 8);
  const std::vector<LayerMix> mixes = MixedLayout(L, H);
  ASSERT_EQ(mixes[0].mode, LayerMix::Mode::kLinear);
  ASSERT_EQ(mixes[1].mode, LayerMix::Mode::kFull);
  ASSERT_EQ(mixes[3].mode, LayerMix::Mode::kGated);
  const at::Tensor ids = Ids(2, 40, 11);
  for (BranchKind kind : {BranchKind::kLightning, BranchKind::kGla, BranchKind::kGatedDeltaNet}) {
    auto branches = Branches(kind);
    MorphableModel m(teacher_, &branches);
    const at::Tensor full = teacher_->Head(m.Forward(ids, mixes));
    // The hybrid differs from the teacher (the branches are untrained), so matching it is not trivial.
    auto teacher = teacher_->Forward(ids);
    ASSERT_TRUE(teacher.ok());
    EXPECT_GT(testing::MaxAbsDiff(full, teacher->logits), 1e-2) << BranchKindName(kind);
    for (int64_t capacity : {int64_t{0}, int64_t{64}, int64_t{30}}) {  // concatenating, in place, overflowing
      HybridCache cache;
      cache.kv.capacity = capacity;
      const at::Tensor got = PiecewiseLogits(m, mixes, ids, {17, 1, 1, 5, 1, 15}, cache);
      ASSERT_TRUE(got.defined());
      EXPECT_LT(testing::MaxAbsDiff(got, full), kTolerance) << BranchKindName(kind) << " capacity " << capacity;
      // Softmax heads cached their keys, branches kept a state, each only where the layer has them.
      for (int64_t l = 0; l < L; ++l) {
        const bool softmax = mixes[l].mode != LayerMix::Mode::kLinear;
        const bool linear = mixes[l].mode == LayerMix::Mode::kLinear || mixes[l].mode == LayerMix::Mode::kGated;
        ASSERT_EQ(cache.kv.k[l].defined(), softmax) << l;
        if (softmax) {
          EXPECT_EQ(cache.kv.k[l].size(2), 40) << l;
        }
        ASSERT_EQ(cache.states[l].defined(), linear) << l;
        if (linear) {
          EXPECT_EQ(cache.states[l].sizes(), (at::IntArrayRef{2, H, 48, 48})) << l;
        }
      }
    }
  }
}

TEST_F(HybridDecodeTest, AllFullLayoutMatchesTheDecodersKvCache) {
  const int64_t L = teacher_->config().num_layers, H = teacher_->config().num_heads;
  auto branches = Branches(BranchKind::kGatedDeltaNet);
  MorphableModel m(teacher_, &branches);
  std::vector<int64_t> all(H);
  for (int64_t h = 0; h < H; ++h) all[h] = h;
  const std::vector<LayerMix> mixes = LayoutMixes(std::vector<std::vector<int64_t>>(L, all), H);
  const at::Tensor ids = Ids(1, 33, 12);
  const std::vector<int64_t> lengths = {20, 1, 1, 1, 10};
  HybridCache hybrid;
  const at::Tensor got = PiecewiseLogits(m, mixes, ids, lengths, hybrid);
  ASSERT_TRUE(got.defined());
  for (int64_t capacity : {int64_t{0}, int64_t{40}}) {
    KvCache cache;
    cache.capacity = capacity;
    ForwardOptions opts;
    opts.cache = &cache;
    std::vector<at::Tensor> pieces;
    int64_t pos = 0;
    for (int64_t len : lengths) {
      auto r = teacher_->Forward(ids.narrow(1, pos, len), opts);
      ASSERT_TRUE(r.ok()) << r.status();
      pieces.push_back(r->logits);
      pos += len;
    }
    EXPECT_LT(testing::MaxAbsDiff(at::cat(pieces, 1), got), 1e-5) << "capacity " << capacity;
    // The teacher's full pass agrees too.
    auto full = teacher_->Forward(ids);
    ASSERT_TRUE(full.ok());
    EXPECT_LT(testing::MaxAbsDiff(got, full->logits), kTolerance);
    if (capacity > 0) {
      // Keys/values were written in place: every layer's view lives in its buffer.
      for (int64_t l = 0; l < L; ++l) {
        ASSERT_TRUE(cache.k_buffer[l].defined()) << l;
        EXPECT_EQ(cache.k_buffer[l].size(2), capacity);
        EXPECT_EQ(cache.k[l].data_ptr(), cache.k_buffer[l].data_ptr()) << l;
        EXPECT_EQ(cache.v[l].data_ptr(), cache.v_buffer[l].data_ptr()) << l;
        EXPECT_EQ(cache.k[l].size(2), 33);
      }
    }
  }
  // Bytes: keys and values of 33 positions per layer, float32.
  const ModelConfig& c = teacher_->config();
  EXPECT_EQ(hybrid.Bytes(), L * 2 * c.num_kv_heads * 33 * c.head_dim * 4);
}

TEST_F(HybridDecodeTest, ForwardCachedRejectsBadInput) {
  const int64_t L = teacher_->config().num_layers, H = teacher_->config().num_heads;
  auto branches = Branches(BranchKind::kLightning);
  MorphableModel m(teacher_, &branches);
  const std::vector<LayerMix> mixes = MixedLayout(L, H);
  HybridCache cache;
  auto code = [&](const at::Tensor& ids, const std::vector<LayerMix>& mx, HybridCache* c) {
    return m.ForwardCached(ids, mx, c).status().code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code(Ids(1, 4, 1), mixes, nullptr), kInvalid);
  EXPECT_EQ(code(Ids(1, 4, 1).to(at::kFloat), mixes, &cache), kInvalid);
  EXPECT_EQ(code(Ids(1, 4, 1).view({4}), mixes, &cache), kInvalid);
  EXPECT_EQ(code(at::zeros({1, 0}, at::kLong), mixes, &cache), kInvalid);
  EXPECT_EQ(code(at::full({1, 3}, teacher_->config().vocab_size, at::kLong), mixes, &cache), kInvalid);
  EXPECT_EQ(code(at::full({1, 3}, -1, at::kLong), mixes, &cache), kInvalid);
  EXPECT_EQ(code(Ids(1, 4, 1), std::vector<LayerMix>(mixes.begin(), mixes.end() - 1), &cache), kInvalid);
  EXPECT_EQ(cache.length(), 0);
  ASSERT_TRUE(m.ForwardCached(Ids(2, 4, 1), mixes, &cache).ok());
  EXPECT_EQ(code(Ids(1, 1, 2), mixes, &cache), kInvalid) << "batch size differs from the cache's";
  EXPECT_EQ(cache.length(), 4);
}

}  // namespace
}  // namespace fm
