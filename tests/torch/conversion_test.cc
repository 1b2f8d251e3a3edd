// The whole pipeline on the demo model with tiny budgets: every method yields valid layouts and a complete export,
// identical seeds give identical results, a cancelled run resumes to the same gates, transformers loads the export
// and reproduces the engine's logits, and bad inputs fail with the right status.
#include "worker/engine/pipeline/conversion.h"

#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace fm {
namespace {

namespace fs = std::filesystem;
const char* kDemo = FM_SOURCE_DIR "/models/demo/qwen3-demo";

std::string Fresh(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/conv_" + name;
  fs::remove_all(dir);
  fs::remove_all(dir + ".work");
  return dir;
}

ConversionOptions Tiny(const std::string& out, SelectionMethod method = SelectionMethod::kFlashMorph) {
  ConversionOptions o;
  o.model_path = kDemo;
  o.output_dir = out;
  o.method = method;
  o.budgets = {Budget{Budget::Unit::kRatio, 0.25}, Budget{Budget::Unit::kLayers, 1}};
  if (method == SelectionMethod::kHead) o.budgets = {Budget{Budget::Unit::kHeads, 6}};
  o.seed = 7;
  o.threads = 1;
  o.export_dtype = "float32";
  o.calibration.sequence_length = 64;
  o.calibration.batch_sequences = 2;
  o.calibration.train_tokens = 3 * 2 * 64;
  o.calibration.eval_sequences = 1;
  o.gates.min_context = 112;
  o.gates.max_context = 128;
  o.gates.passkeys_per_sample = 1;
  o.gates.words_per_passkey = 4;
  o.gates.train_tokens = 4 * 120;
  o.nll.samples = 2;
  o.post_training.sequence_length = 64;
  o.post_training.distill_tokens = 2 * 2 * 64;
  o.post_training.long_context_tokens = 128;
  o.evaluation.needle_lengths = {128};
  o.evaluation.needle_samples = 2;
  o.evaluation.held_out_tokens = 128;
  return o;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Cancels after `limit` step events.
class CancelAfter : public ProgressSink {
 public:
  explicit CancelAfter(int limit) : limit_(limit) {}
  void OnProgress(const ProgressEvent& e) override {
    if (e.total_steps > 0) ++steps_;
    stages_.insert(std::string(StageName(e.stage)));
    if (!e.gates.empty()) last_gates_ = e.gates;
  }
  bool CancelRequested() override { return limit_ >= 0 && steps_ >= limit_; }
  int steps_ = 0;
  int limit_;
  std::set<std::string> stages_;
  std::vector<double> last_gates_;
};

TEST(Conversion, FlashMorphEndToEndWritesACompleteExport) {
  const std::string out = Fresh("flashmorph");
  CancelAfter sink(-1);
  auto r = RunConversion(Tiny(out), &sink);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->layouts.size(), 2u);
  EXPECT_EQ(r->layouts[0].kept.size(), 2u);  // round(0.25 * 8)
  EXPECT_EQ(r->layouts[1].kept.size(), 1u);
  EXPECT_EQ(r->layouts[0].scores.size(), 8u);
  for (double g : r->layouts[0].scores) EXPECT_TRUE(g >= 0 && g <= 1) << g;
  for (const char* stage :
       {"load", "calibration", "selection", "discretization", "post_training", "evaluation", "export"})
    EXPECT_TRUE(sink.stages_.count(stage)) << stage;
  EXPECT_EQ(sink.last_gates_.size(), 8u);
  ASSERT_TRUE(r->evaluation.has_value());
  EXPECT_DOUBLE_EQ(r->evaluation->needles[0].teacher_recall, 1.0) << "the demo model retrieves passkeys";
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "conversion_layout.json", "README.md",
                        "modeling_flashmorph.py", "configuration_flashmorph.py"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  auto config = nlohmann::json::parse(Slurp(out + "/config.json"));
  EXPECT_EQ(config["model_type"], "flashmorph");
  EXPECT_EQ(config["base_model_type"], "qwen3");
  ASSERT_EQ(config["layer_types"].size(), 8u);
  int full = 0;
  for (const auto& t : config["layer_types"]) full += t == "full_attention";
  EXPECT_EQ(full, 2);
  auto layout = nlohmann::json::parse(Slurp(out + "/conversion_layout.json"));
  EXPECT_EQ(layout["layout"]["full_attention_layers"].get<std::vector<int64_t>>(), r->layouts[0].kept);
  EXPECT_EQ(layout["source"]["sha256"].get<std::string>().size(), 64u);
  EXPECT_EQ(layout["layouts"].size(), 2u);
  EXPECT_FALSE(fs::exists(out + ".partial"));

  // transformers loads the export with trust_remote_code and computes the engine's logits.
  const std::string cmd = std::string(FM_PYTHON) + " " FM_SOURCE_DIR "/tests/python/check_export_parity.py " + out +
                          " " + out + ".work/export_probe.safetensors --tol 1e-4";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

TEST(Conversion, SameSeedSameLayoutAndResumeAfterCancel) {
  const std::string a = Fresh("seed_a"), b = Fresh("seed_b");
  auto ra = RunConversion(Tiny(a));
  ASSERT_TRUE(ra.ok()) << ra.status();
  // Cancel in the middle of gate optimisation (3 calibration steps + 2 gate steps), then resume.
  CancelAfter cancel(5);
  auto cancelled = RunConversion(Tiny(b), &cancel);
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled) << cancelled.status();
  EXPECT_FALSE(fs::exists(b + "/config.json"));
  EXPECT_TRUE(fs::exists(b + ".work/gates/state.json"));
  auto rb = RunConversion(Tiny(b));
  ASSERT_TRUE(rb.ok()) << rb.status();
  EXPECT_EQ(ra->layouts[0].kept, rb->layouts[0].kept);
  EXPECT_EQ(ra->layouts[0].scores, rb->layouts[0].scores) << "resumed gates must equal an uninterrupted run's";
  EXPECT_EQ(ra->calibration_error_after, rb->calibration_error_after);
}

// Cancelled in the middle of calibration: the resumed run loads the branch weights into the tensors its optimisers
// update and ends with the uninterrupted run's calibrated branches and gates.
TEST(Conversion, ResumeInTheMiddleOfCalibration) {
  const std::string a = Fresh("calib_a"), b = Fresh("calib_b");
  auto ra = RunConversion(Tiny(a));
  ASSERT_TRUE(ra.ok()) << ra.status();
  CancelAfter cancel(2);
  auto cancelled = RunConversion(Tiny(b), &cancel);
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled) << cancelled.status();
  EXPECT_TRUE(fs::exists(b + ".work/calibration/state.json"));
  EXPECT_FALSE(fs::exists(b + ".work/gates/state.json")) << "the cancel must land inside calibration";
  auto rb = RunConversion(Tiny(b));
  ASSERT_TRUE(rb.ok()) << rb.status();
  EXPECT_EQ(ra->calibration_error_after, rb->calibration_error_after);
  EXPECT_EQ(ra->layouts[0].scores, rb->layouts[0].scores);
}

// Several devices (docs/ENGINE.md §7), here the CPU three times: replicas (data-parallel gates over the step's two
// samples, layer-parallel calibration) and layer sharding give the one-device layout and scores, up to the order
// of float sums; a run cancelled on three devices resumes on one.
TEST(Conversion, SeveralDevicesGiveTheOneDeviceResult) {
  auto options = [](const std::string& out, const std::string& device, bool shard) {
    ConversionOptions o = Tiny(out);
    o.gates.batch_sequences = 2;
    o.gates.train_tokens = 3 * 2 * 120;
    o.device = device;
    o.shard_layers = shard;
    return o;
  };
  auto near = [](const std::vector<double>& a, const std::vector<double>& b, double tol) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (std::abs(a[i] - b[i]) > tol) return false;
    return true;
  };
  const std::string one = Fresh("dev_one"), replicas = Fresh("dev_replicas"), sharded = Fresh("dev_sharded"),
                    moved = Fresh("dev_moved");
  auto r1 = RunConversion(options(one, "cpu", false));
  ASSERT_TRUE(r1.ok()) << r1.status();
  auto r3 = RunConversion(options(replicas, "cpu,cpu,cpu", false));
  ASSERT_TRUE(r3.ok()) << r3.status();
  auto rs = RunConversion(options(sharded, "cpu, cpu", true));
  ASSERT_TRUE(rs.ok()) << rs.status();
  for (const auto* r : {&r3, &rs}) {
    EXPECT_EQ((*r)->layouts[0].kept, r1->layouts[0].kept);
    EXPECT_TRUE(near((*r)->layouts[0].scores, r1->layouts[0].scores, 1e-4));
    EXPECT_TRUE(near((*r)->calibration_error_after, r1->calibration_error_after, 1e-5));
  }
  if (at::hasCUDA()) {  // on the GPU machine: layers really split between the CPU and the GPU (float32)
    auto rc = RunConversion(options(Fresh("dev_cpu_gpu"), "cpu,cuda:0", true));
    ASSERT_TRUE(rc.ok()) << rc.status();
    EXPECT_EQ(rc->layouts[0].kept, r1->layouts[0].kept);
    EXPECT_TRUE(near(rc->layouts[0].scores, r1->layouts[0].scores, 1e-3));
  }
  CancelAfter cancel(5);  // 3 calibration steps + 2 gate steps
  EXPECT_EQ(RunConversion(options(moved, "cpu,cpu,cpu", false), &cancel).status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(fs::exists(moved + ".work/gates/state.json"));
  auto rm = RunConversion(options(moved, "cpu", false));
  ASSERT_TRUE(rm.ok()) << rm.status();
  EXPECT_TRUE(near(rm->layouts[0].scores, r1->layouts[0].scores, 1e-4));
  // A device list the engine cannot use is refused with the option named.
  auto bad = RunConversion(options(Fresh("dev_bad"), "cpu,tpu", false));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_NE(bad.status().message().find("device"), std::string::npos);
}

TEST(Conversion, PeersRunOnTheSameJob) {
  for (SelectionMethod m : {SelectionMethod::kUniform, SelectionMethod::kNll, SelectionMethod::kHead}) {
    const std::string out = Fresh(std::string(SelectionMethodName(m)));
    ConversionOptions o = Tiny(out, m);
    o.post_training.distill_tokens = 0;
    o.post_training.long_context_tokens = 0;
    auto r = RunConversion(o);
    ASSERT_TRUE(r.ok()) << SelectionMethodName(m) << ": " << r.status();
    const Layout& l = r->layouts[0];
    EXPECT_EQ(l.method, SelectionMethodName(m));
    if (m == SelectionMethod::kUniform) {
      EXPECT_EQ(l.kept, (std::vector<int64_t>{3, 7}));
    }
    if (m == SelectionMethod::kNll) {
      EXPECT_EQ(l.scores.size(), 8u);
    }
    if (m == SelectionMethod::kHead) {
      EXPECT_EQ(l.kept.size(), 6u);
      EXPECT_EQ(l.scores.size(), 32u);
    }
    EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  }
}

TEST(Conversion, NllWithSlidingWindowsAndPostTrainingEveryWeight) {
  const std::string out = Fresh("nll_window_all");
  ConversionOptions o = Tiny(out, SelectionMethod::kNll);
  o.nll.ablation = NllSettings::Ablation::kSlidingWindow;
  o.nll.sliding_window = 16;
  o.post_training.train_all = true;
  o.evaluation.enabled = false;
  auto r = RunConversion(o);
  ASSERT_TRUE(r.ok()) << r.status();
  auto rec = nlohmann::json::parse(r->report_json);
  EXPECT_EQ(rec["selection"]["ablation"], "sliding_window");
  EXPECT_TRUE(rec["settings"]["post_training"]["train_all"].get<bool>());
  // Training every weight changes the exported MLPs: they no longer equal the teacher's.
  const std::string cmd = std::string(FM_PYTHON) +
                          " -c \"import sys; from safetensors.torch import load_file; "
                          "a = load_file(sys.argv[1]); b = load_file(sys.argv[2]); "
                          "k = 'model.layers.0.mlp.up_proj.weight'; "
                          "sys.exit(0 if (a[k].float() - b[k].float()).abs().max() > 0 else 1)\" " +
                          out + "/model.safetensors " + kDemo + "/model.safetensors";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const std::string parity = std::string(FM_PYTHON) + " " FM_SOURCE_DIR "/tests/python/check_export_parity.py " + out +
                             " " + out + ".work/export_probe.safetensors --tol 1e-4";
  EXPECT_EQ(std::system(parity.c_str()), 0) << parity;
}

TEST(Conversion, BadInputsFailWithTheRightStatus) {
  ConversionOptions o = Tiny(Fresh("bad"));
  o.model_path = "/nonexistent/model";
  EXPECT_EQ(RunConversion(o).status().code(), absl::StatusCode::kNotFound);
  o = Tiny(Fresh("bad"));
  o.budgets = {Budget{Budget::Unit::kLayers, 9}};
  EXPECT_EQ(RunConversion(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = Tiny(Fresh("bad"));
  o.gates.min_context = 40;  // too short for the passkey prompt
  o.gates.max_context = 40;
  EXPECT_EQ(RunConversion(o).status().code(), absl::StatusCode::kInvalidArgument);
  // A model directory without a tokenizer, and one with a truncated checkpoint.
  const std::string broken = Fresh("broken_model");
  fs::create_directories(broken);
  fs::copy_file(std::string(kDemo) + "/config.json", broken + "/config.json");
  fs::copy_file(std::string(kDemo) + "/model.safetensors", broken + "/model.safetensors");
  o = Tiny(Fresh("bad"));
  o.model_path = broken;
  EXPECT_EQ(RunConversion(o).status().code(), absl::StatusCode::kFailedPrecondition);
  fs::copy_file(std::string(kDemo) + "/tokenizer.json", broken + "/tokenizer.json");
  fs::resize_file(broken + "/model.safetensors", 1000);
  auto s = RunConversion(o).status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.safetensors"), std::string::npos) << s;
}

}  // namespace
}  // namespace fm
