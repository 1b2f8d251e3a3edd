#include "worker/engine/pipeline/conversion.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/common/str_cat.h"
#include "worker/engine/data/brown_corpus.h"
#include "worker/engine/data/passkey.h"
#include "worker/engine/data/text_dataset.h"
#include "worker/engine/eval/evaluation.h"
#include "worker/engine/export/hf_export.h"
#include "worker/engine/formats/atomic_file.h"
#include "worker/engine/formats/checkpoint_dir.h"
#include "worker/engine/formats/mapped_file.h"
#include "worker/engine/formats/sha256.h"
#include "worker/engine/gguf/gguf_file.h"
#include "worker/engine/model/decoder_placement.h"
#include "worker/engine/model/gguf_tokenizer.h"
#include "worker/engine/model/weight_loader.h"
#include "worker/engine/morph/calibration.h"
#include "worker/engine/morph/gate_optimization.h"
#include "worker/engine/morph/linear_branch.h"
#include "worker/engine/morph/morphable_model.h"
#include "worker/engine/morph/nll_selection.h"
#include "worker/engine/morph/post_training.h"
#include "worker/engine/morph/replicas.h"
#include "worker/engine/morph/tensor_file.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace fm {
namespace fs = std::filesystem;
namespace {

constexpr char kEngineVersion[] = "flashmorph-engine 0.1.0";

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int64_t CeilDiv(int64_t a, int64_t b) { return b > 0 ? (a + b - 1) / b : 0; }

bool IsGguf(const std::string& path) {
  return path.size() > 5 && path.substr(path.size() - 5) == ".gguf";
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_path) {
  if (IsGguf(model_path)) {
    FM_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(model_path));
    return TokenizerFromGguf(file);
  }
  const std::string path = model_path + "/tokenizer.json";
  std::error_code ec;
  if (!fs::exists(path, ec))
    return absl::FailedPreconditionError(
        StrCat(model_path, " has no tokenizer.json: the conversion needs the model's tokenizer for its data"));
  return Tokenizer::FromJsonFile(path);
}

// sha256 over the source weight files (the GGUF file, or the safetensors files in name order).
absl::StatusOr<std::string> SourceChecksum(const std::string& model_path) {
  std::vector<std::string> files;
  if (IsGguf(model_path)) {
    files.push_back(model_path);
  } else {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(model_path, ec)) {
      const std::string n = e.path().filename().string();
      if (n.size() > 12 && n.substr(n.size() - 12) == ".safetensors") files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
  }
  Sha256 sha;
  for (const std::string& f : files) {
    FM_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> m, MappedFile::Open(f));
    sha.Update(m->data(), m->size());
  }
  return sha.HexDigest();
}

at::ScalarType ParseDtype(const std::string& s) {
  if (s == "bfloat16") return at::kBFloat16;
  if (s == "float16") return at::kHalf;
  if (s == "float64") return at::kDouble;
  return at::kFloat;
}

MaskedSample ToMaskedSample(const PasskeySample& s) {
  std::vector<int64_t> ids(s.ids.begin(), s.ids.end());
  std::vector<uint8_t> mask(s.answer_mask.begin(), s.answer_mask.end());
  MaskedSample m;
  m.ids = at::tensor(ids, at::kLong).view({1, -1});
  m.answer_mask = at::tensor(at::ArrayRef<uint8_t>(mask), at::kByte).to(at::kBool).view({1, -1});
  return m;
}

std::unique_ptr<Decoder> CopyDecoder(const Decoder& d) {
  DecoderWeights w = d.weights();
  auto clone = [](at::Tensor& t) {
    if (t.defined()) t = t.detach().clone();
  };
  clone(w.embed_tokens);
  clone(w.final_norm);
  for (auto& l : w.layers)
    for (at::Tensor* t : {&l.input_norm, &l.q_proj, &l.k_proj, &l.v_proj, &l.q_bias, &l.k_bias, &l.v_bias,
                          &l.o_proj, &l.o_bias, &l.q_norm, &l.k_norm, &l.post_attention_norm, &l.gate_proj,
                          &l.up_proj, &l.down_proj, &l.gate_bias, &l.up_bias, &l.down_bias})
      clone(*t);
  if (d.config().tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
  } else {
    clone(w.lm_head);
  }
  return std::make_unique<Decoder>(d.config(), std::move(w));
}

nlohmann::ordered_json LayoutJson(const Layout& l) {
  nlohmann::ordered_json j;
  j["budget"] = l.budget.ToString();
  j["method"] = l.method;
  j["head_level"] = l.head_level;
  j["kept_units"] = l.kept_units;
  j["layer_types"] = nlohmann::ordered_json::array();
  for (LayerType t : l.LayerTypes()) j["layer_types"].push_back(std::string(LayerTypeName(t)));
  if (l.head_level) {
    j["full_attention_heads"] = l.FullAttentionHeads();
  } else {
    j["full_attention_layers"] = l.kept;
  }
  j["scores"] = l.scores;
  if (l.margin) {
    j["margin"] = *l.margin;
  } else {
    j["margin"] = nullptr;
  }
  j["near_ties"] = nlohmann::ordered_json::array();
  for (const NearTie& t : l.near_ties) j["near_ties"].push_back({{"kept", t.kept}, {"dropped", t.dropped}, {"gap", t.gap}});
  j["summary"] = l.Summary();
  return j;
}

std::string ModelCard(const ConversionOptions& o, const ConversionResult& r, const ModelConfig& c) {
  std::ostringstream s;
  const Layout& l = r.layouts[0];
  s << "---\nlibrary_name: transformers\ntags:\n- flashmorph\n- hybrid-attention\n---\n\n";
  s << "# FlashMorph hybrid of `" << fs::path(o.model_path).filename().string() << "`\n\n";
  s << "Converted by FlashMorph (" << kEngineVersion << "): " << c.num_layers << " layers, of which "
    << (l.head_level ? "heads " : "layers ") << "chosen by the `" << l.method << "` method keep softmax attention; "
    << "the others use a `" << BranchKindName(o.branch) << "` linear-attention branch.\n\n";
  s << "Load with `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`.\n\n";
  s << "## Layout (" << l.budget.ToString() << ")\n\n| layer | type | score |\n|---|---|---|\n";
  const auto types = l.LayerTypes();
  for (int64_t i = 0; i < c.num_layers; ++i) {
    s << "| " << i << " | " << LayerTypeName(types[i]) << " | ";
    if (!l.head_level && !l.scores.empty()) s << l.scores[i];
    s << " |\n";
  }
  if (r.evaluation) {
    s << "\n## Evaluation\n\n| context | teacher recall | hybrid recall | teacher token acc. | hybrid token acc. |\n"
         "|---|---|---|---|---|\n";
    for (const NeedleResult& n : r.evaluation->needles)
      s << "| " << n.length << " | " << n.teacher_recall << " | " << n.hybrid_recall << " | "
        << n.teacher_token_accuracy << " | " << n.hybrid_token_accuracy << " |\n";
    s << "\nHeld-out text (" << r.evaluation->text_tokens << " tokens): teacher perplexity " << r.evaluation->teacher_ppl
      << ", hybrid perplexity " << r.evaluation->hybrid_ppl << ", KL(teacher || hybrid) " << r.evaluation->kl
      << " nats/token.\n";
  }
  s << "\nSee `conversion_layout.json` for every gate value, margins, settings and the source checksum.\n";
  return s.str();
}

class Pipeline {
 public:
  Pipeline(ConversionOptions o, ProgressSink& sink) : o_(std::move(o)), sink_(sink) {}

  absl::StatusOr<ConversionResult> Run();

 private:
  void Message(Stage stage, const std::string& text) {
    ProgressEvent ev;
    ev.stage = stage;
    ev.phase = "message";
    ev.message = text;
    sink_.OnProgress(ev);
  }
  absl::Status CheckCancelled(const char* where) {
    if (sink_.CancelRequested()) return absl::CancelledError(StrCat("conversion cancelled before ", where));
    return absl::OkStatus();
  }
  absl::StatusOr<at::Tensor> TextBatch(DataSplit split, int64_t first_index, int64_t count, int64_t length,
                                       uint64_t seed) const;
  absl::StatusOr<std::unique_ptr<PasskeyGenerator>> Passkeys(DataSplit split, int64_t min_len, int64_t max_len,
                                                             uint64_t seed) const;
  std::string DataFingerprint() const {
    return StrCat("data:", static_cast<int>(o_.data.kind), ":", o_.data.path);
  }
  static std::string LayoutKey(const Layout& l) {
    std::string k = l.head_level ? "h" : "l";
    for (int64_t u : l.kept) k += StrCat("-", u);
    return k;
  }
  // Logits of the hybrid, as the engine computes them, on a fixed held-out window: <work_dir>/export_probe.safetensors
  // ("input_ids", "logits"), so any other implementation of the export (transformers with trust_remote_code,
  // tests/python/check_export_parity.py) can be checked against the engine.
  absl::Status WriteExportProbe() {
    at::NoGradGuard no_grad;
    const Decoder& student = student_copy_ ? *student_copy_ : *teacher_;
    MorphableModel hybrid(&student, &branches_);
    const int64_t T = std::min<int64_t>(96, data_->size(DataSplit::kHeldOut));
    FM_ASSIGN_OR_RETURN(at::Tensor ids, TextBatch(DataSplit::kHeldOut, 0, 1, T, 97));
    std::vector<LayerMix> mixes = LayoutMixes(result_.layouts[0].FullAttentionHeads(), teacher_->config().num_heads);
    at::Tensor logits = student.Head(hybrid.Forward(ids, mixes)).to(at::kFloat);
    return SaveTensors(o_.work_dir + "/export_probe.safetensors",
                       {{"input_ids", ids}, {"logits", logits}},
                       {{"export_dtype", o_.export_dtype}, {"compute_dtype", o_.dtype}});
  }
  absl::Status Load();
  absl::Status Calibrate();
  absl::Status Select();
  absl::Status PostTrainStage();
  absl::Status Evaluate();
  absl::Status Export();

  ConversionOptions o_;
  ProgressSink& sink_;
  ConversionResult result_;
  at::Device device_ = at::kCPU;  // the first of devices_: where the embeddings (and an unsharded model) live
  std::vector<at::Device> devices_;
  std::unique_ptr<Replicas> replicas_;  // several devices without layer sharding
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Decoder> teacher_, student_copy_;
  std::optional<TextDataset> data_;
  std::vector<LinearBranch> branches_;
  BranchSettings branch_settings_;
  ModelShape shape_;
  std::vector<double> scores_;  // gates or NLL rises
  std::vector<std::vector<double>> gate_history_;
  nlohmann::ordered_json selection_record_;
  std::string source_sha256_;
};

absl::StatusOr<at::Tensor> Pipeline::TextBatch(DataSplit split, int64_t first_index, int64_t count, int64_t length,
                                               uint64_t seed) const {
  std::vector<int64_t> ids;
  ids.reserve(count * length);
  for (int64_t i = 0; i < count; ++i) {
    FM_ASSIGN_OR_RETURN(std::vector<int32_t> w, data_->Window(split, first_index + i, length, seed));
    ids.insert(ids.end(), w.begin(), w.end());
  }
  return at::tensor(ids, at::kLong).view({count, length});
}

absl::StatusOr<std::unique_ptr<PasskeyGenerator>> Pipeline::Passkeys(DataSplit split, int64_t min_len,
                                                                     int64_t max_len, uint64_t seed) const {
  PasskeyOptions p;
  p.num_passkeys = static_cast<int32_t>(o_.gates.passkeys_per_sample);
  p.words_per_passkey = static_cast<int32_t>(o_.gates.words_per_passkey);
  p.min_length = min_len;
  p.max_length = max_len;
  p.seed = seed;
  FM_ASSIGN_OR_RETURN(PasskeyGenerator g, PasskeyGenerator::Create(*tokenizer_, *data_, split, p));
  return std::make_unique<PasskeyGenerator>(std::move(g));
}

absl::Status Pipeline::Load() {
  const auto t0 = std::chrono::steady_clock::now();
  {
    absl::StatusOr<std::vector<at::Device>> devices = ParseDeviceList(o_.device);
    if (!devices.ok())
      return absl::Status(devices.status().code(), StrCat("conversion option device: ", devices.status().message()));
    devices_ = *std::move(devices);
    device_ = devices_.front();
  }
  if (o_.threads > 0) at::set_num_threads(static_cast<int>(o_.threads));
  std::error_code ec;
  if (!fs::exists(o_.model_path, ec)) return absl::NotFoundError(StrCat("model ", o_.model_path, " does not exist"));
  FM_ASSIGN_OR_RETURN(tokenizer_, LoadTokenizer(o_.model_path));
  LoadOptions lo;
  const bool sharded = o_.shard_layers && devices_.size() > 1;
  lo.device = sharded ? at::Device(at::kCPU) : device_;  // a sharded model is placed from host memory
  lo.dtype = ParseDtype(o_.dtype.empty() ? (device_.is_cuda() ? "bfloat16" : "float32") : o_.dtype);
  FM_ASSIGN_OR_RETURN(teacher_, LoadDecoder(o_.model_path, lo));
  if (sharded) {
    FM_ASSIGN_OR_RETURN(std::vector<int64_t> part_of,
                        BalancedLayerSplit(teacher_->config().num_layers, static_cast<int64_t>(devices_.size())));
    std::vector<at::Device> layer_devices;
    for (int64_t p : part_of) layer_devices.push_back(devices_[p]);
    FM_ASSIGN_OR_RETURN(teacher_, PlaceDecoder(*teacher_, layer_devices));
  }
  const ModelConfig& c = teacher_->config();
  shape_ = {c.num_layers, c.num_heads, c.hidden_size, c.max_position_embeddings, 0};
  ScaleToModel(shape_, device_.is_cuda(), o_);
  FM_RETURN_IF_ERROR(ValidateConversionOptions(o_, shape_));
  FM_ASSIGN_OR_RETURN(source_sha256_, SourceChecksum(o_.model_path));

  // Data.
  switch (o_.data.kind) {
    case TextSourceKind::kBundled: {
      FM_ASSIGN_OR_RETURN(TextDataset d, TextDataset::FromBrownCorpus(DefaultBrownCorpusDir(), *tokenizer_));
      data_.emplace(std::move(d));
      break;
    }
    case TextSourceKind::kJsonl: {
      if (o_.data.text_field != "text")
        return absl::UnimplementedError(StrCat("JSONL field '", o_.data.text_field, "': only \"text\" is read"));
      FM_ASSIGN_OR_RETURN(TextDataset d, TextDataset::FromJsonl(o_.data.path, *tokenizer_));
      data_.emplace(std::move(d));
      break;
    }
    case TextSourceKind::kTokensU16:
    case TextSourceKind::kTokensU32: {
      FM_ASSIGN_OR_RETURN(TextDataset d, TextDataset::FromTokenFile(o_.data.path,
                                                                    o_.data.kind == TextSourceKind::kTokensU16 ? 2 : 4,
                                                                    static_cast<int32_t>(c.vocab_size)));
      data_.emplace(std::move(d));
      break;
    }
  }
  fs::create_directories(o_.work_dir, ec);
  if (ec) return absl::InternalError(StrCat("cannot create work dir ", o_.work_dir, ": ", ec.message()));
  // Branches start from the teacher's own weights.
  branch_settings_.kind = o_.branch;
  for (int64_t l = 0; l < c.num_layers; ++l)
    branches_.push_back(LinearBranch::FromTeacher(c, teacher_->weights().layers[l], l, branch_settings_, o_.seed));
  if (devices_.size() > 1 && !sharded) {
    FM_ASSIGN_OR_RETURN(replicas_, Replicas::Create(*teacher_, branches_, devices_));
  }
  if (devices_.size() > 1)
    Message(Stage::kLoad, StrCat(devices_.size(), " devices (", o_.device, "): ",
                                 sharded ? "layers sharded over them"
                                         : "replicas for data-parallel gates and layer-parallel calibration"));
  result_.timings.push_back({"load", Seconds(t0), 0});
  Message(Stage::kLoad, StrCat("loaded ", o_.model_path, ": ", ArchitectureName(c.arch), ", ", c.num_layers,
                               " layers, ", c.num_heads, " heads; text: ", data_->source_name(), " (",
                               data_->size(DataSplit::kTrain), " train / ", data_->size(DataSplit::kHeldOut),
                               " held-out tokens)"));
  return absl::OkStatus();
}

absl::Status Pipeline::Calibrate() {
  FM_RETURN_IF_ERROR(CheckCancelled("calibration"));
  const CalibrationSettings& s = o_.calibration;
  CalibrationPlan plan;
  plan.steps = CeilDiv(s.train_tokens, s.batch_sequences * s.sequence_length);
  plan.warmup_steps = std::min<int64_t>(plan.steps / 10, 50);
  plan.learning_rate = s.learning_rate;
  plan.fingerprint = StrCat("calibration/", BranchKindName(o_.branch), "/seed", o_.seed, "/steps", plan.steps, "/",
                            s.batch_sequences, "x", s.sequence_length, "/lr", s.learning_rate, "/", DataFingerprint());
  const int64_t B = s.batch_sequences, T = s.sequence_length;
  const uint64_t seed = o_.seed * 7919 + 11;
  FM_ASSIGN_OR_RETURN(at::Tensor eval_ids, TextBatch(DataSplit::kHeldOut, 0, s.eval_sequences, T, seed));
  Message(Stage::kCalibration, StrCat("calibrating ", branches_.size(), " ", BranchKindName(o_.branch),
                                      " branches: ", plan.steps, " steps of ", B, "x", T, " tokens"));
  if (replicas_) {
    for (int64_t r = 0; r < replicas_->size(); ++r) plan.parallel_teachers.push_back(&replicas_->teacher(r));
  } else if (devices_.size() > 1) {
    plan.parallel_teachers.assign(devices_.size(), teacher_.get());  // the sharded model: shard s on device s
  }
  FM_ASSIGN_OR_RETURN(CalibrationReport r,
                      CalibrateBranches(*teacher_, branches_, plan,
                                        [&](int64_t step) { return TextBatch(DataSplit::kTrain, step * B, B, T, seed); },
                                        eval_ids, o_.work_dir + "/calibration", sink_));
  result_.calibration_error_before = r.error_before;
  result_.calibration_error_after = r.error_after;
  result_.timings.push_back({"calibration", r.seconds, r.tokens});
  return absl::OkStatus();
}

absl::Status Pipeline::Select() {
  FM_RETURN_IF_ERROR(CheckCancelled("selection"));
  const ModelConfig& c = teacher_->config();
  const SelectionMethod m = o_.method;
  if (m == SelectionMethod::kFlashMorph || m == SelectionMethod::kHead) {
    const GateSettings& g = o_.gates;
    GatePlan plan;
    plan.samples_per_step = g.batch_sequences;
    plan.steps = std::max<int64_t>(1, CeilDiv(g.train_tokens, (g.min_context + g.max_context) / 2 * g.batch_sequences));
    plan.lr_start = g.learning_rate_start;
    plan.lr_end = g.learning_rate_end;
    plan.sparsity_lambda = g.sparsity_lambda;
    plan.head_level = m == SelectionMethod::kHead;
    plan.checkpointing = g.activation_checkpointing.value_or(true);
    plan.replicas = replicas_.get();
    plan.fingerprint = StrCat("gates/", SelectionMethodName(m), "/seed", o_.seed, "/steps", plan.steps, "/ctx",
                              g.min_context, "-", g.max_context, "/pk", g.passkeys_per_sample, "x",
                              g.words_per_passkey, "/lr", g.learning_rate_start, "-", g.learning_rate_end, "/lambda",
                              g.sparsity_lambda, "/", DataFingerprint());
    FM_ASSIGN_OR_RETURN(auto gen, Passkeys(DataSplit::kTrain, g.min_context, g.max_context, o_.seed * 7919 + 23));
    Message(Stage::kSelection, StrCat("optimising ", plan.head_level ? c.num_layers * c.num_heads : c.num_layers,
                                      " gates: ", plan.steps, " steps, contexts ", g.min_context, "..", g.max_context,
                                      ", λ=", g.sparsity_lambda));
    FM_ASSIGN_OR_RETURN(GateReport r,
                        OptimizeGates(*teacher_, branches_, plan,
                                      [&](int64_t i) -> absl::StatusOr<MaskedSample> {
                                        FM_ASSIGN_OR_RETURN(PasskeySample s, gen->Sample(i));
                                        return ToMaskedSample(s);
                                      },
                                      StrCat(o_.work_dir, "/", m == SelectionMethod::kHead ? "head_gates" : "gates"),
                                      sink_));
    scores_ = r.gates;
    gate_history_ = r.history;
    result_.selection_seconds = r.seconds;
    result_.timings.push_back({"selection", r.seconds, r.tokens});
    selection_record_ = {{"kind", "gates"}, {"steps", r.steps}, {"tokens", r.tokens},
                         {"final_distance", r.distance}, {"final_penalty", r.penalty}, {"history", r.history}};
  } else if (m == SelectionMethod::kNll) {
    const std::string path = StrCat(o_.work_dir, "/nll_", o_.nll.ablation == NllSettings::Ablation::kSlidingWindow
                                                              ? StrCat("window", o_.nll.sliding_window)
                                                              : "branch",
                                    "_", o_.nll.samples, ".json");
    std::error_code ec;
    if (fs::exists(path, ec)) {
      std::ifstream in(path);
      std::stringstream ss;
      ss << in.rdbuf();
      auto j = nlohmann::ordered_json::parse(ss.str(), nullptr, false);
      if (j.is_discarded()) return absl::DataLossError(StrCat(path, " is not JSON"));
      scores_ = j["rise"].get<std::vector<double>>();
      selection_record_ = j;
      result_.selection_seconds = j.value("seconds", 0.0);
    } else {
      FM_ASSIGN_OR_RETURN(auto gen, Passkeys(DataSplit::kTrain, o_.gates.min_context, o_.gates.max_context,
                                             o_.seed * 7919 + 29));
      std::vector<MaskedSample> samples;
      for (int64_t i = 0; i < o_.nll.samples; ++i) {
        FM_ASSIGN_OR_RETURN(PasskeySample s, gen->Sample(i));
        samples.push_back(ToMaskedSample(s));
      }
      const bool window = o_.nll.ablation == NllSettings::Ablation::kSlidingWindow;
      Message(Stage::kSelection, StrCat("scoring ", c.num_layers, " layers by answer NLL (",
                                        window ? StrCat("sliding window ", o_.nll.sliding_window) : "linear branch",
                                        ", ", samples.size(), " samples)"));
      FM_ASSIGN_OR_RETURN(NllScores r, ScoreLayersByNll(*teacher_, branches_, samples,
                                                        window ? LayerMix::Mode::kSlidingWindow : LayerMix::Mode::kLinear,
                                                        o_.nll.sliding_window, sink_));
      scores_ = r.rise;
      result_.selection_seconds = r.seconds;
      selection_record_ = {{"kind", "nll_rise"}, {"teacher_nll", r.teacher_nll}, {"rise", r.rise},
                           {"tokens", r.tokens}, {"seconds", r.seconds},
                           {"ablation", window ? "sliding_window" : "linear_branch"}};
      FM_RETURN_IF_ERROR(WriteFileAtomically(path, selection_record_.dump(1)));
    }
    result_.timings.push_back({"selection", result_.selection_seconds, 0});
  } else {
    selection_record_ = {{"kind", "uniform"}};
    result_.timings.push_back({"selection", 0.0, 0});
  }
  // Discretise for every budget.
  for (const Budget& b : o_.budgets) {
    absl::StatusOr<Layout> l =
        m == SelectionMethod::kUniform
            ? UniformLayout(b, c.num_layers, c.num_heads)
            : SelectTopK(scores_, b, c.num_layers, c.num_heads, m == SelectionMethod::kHead,
                         std::string(SelectionMethodName(m)));
    if (!l.ok()) return l.status();
    result_.layouts.push_back(std::move(*l));
    Message(Stage::kDiscretization, result_.layouts.back().Summary());
  }
  return absl::OkStatus();
}

absl::Status Pipeline::PostTrainStage() {
  FM_RETURN_IF_ERROR(CheckCancelled("post-training"));
  const PostTrainingSettings& p = o_.post_training;
  PostTrainPlan plan;
  constexpr int64_t kDistillBatch = 2;
  plan.distill_steps = CeilDiv(p.distill_tokens, kDistillBatch * p.sequence_length);
  plan.long_context_steps = CeilDiv(p.long_context_tokens, p.long_context_length);
  plan.learning_rate = p.learning_rate;
  plan.warmup_steps = 10;
  plan.train_all = p.train_all;
  plan.checkpointing = o_.gates.activation_checkpointing.value_or(true);
  plan.fingerprint = StrCat("post/", p.train_all ? "all" : "branches", "/seed", o_.seed, "/steps", plan.distill_steps,
                            "+", plan.long_context_steps, "/lr", p.learning_rate, "/", DataFingerprint());
  if (plan.distill_steps + plan.long_context_steps == 0) return absl::OkStatus();
  if (p.train_all) student_copy_ = CopyDecoder(*teacher_);
  const Decoder& student = student_copy_ ? *student_copy_ : *teacher_;
  const Layout& layout = result_.layouts[0];
  std::vector<LayerMix> mixes = LayoutMixes(layout.FullAttentionHeads(), teacher_->config().num_heads);
  const uint64_t seed = o_.seed * 7919 + 31;
  FM_ASSIGN_OR_RETURN(auto gen, Passkeys(DataSplit::kTrain, p.long_context_length, p.long_context_length, seed));
  Message(Stage::kPostTraining, StrCat("post-training (", p.train_all ? "all weights" : "branches", "): ",
                                       plan.distill_steps, " distillation steps, ", plan.long_context_steps,
                                       " long-context steps"));
  const int64_t T = p.sequence_length;
  FM_ASSIGN_OR_RETURN(
      PostTrainReport r,
      PostTrain(*teacher_, student, branches_, mixes, plan,
                [&](int64_t step) { return TextBatch(DataSplit::kTrain, step * kDistillBatch, kDistillBatch, T, seed); },
                [&](int64_t i) -> absl::StatusOr<MaskedSample> {
                  FM_ASSIGN_OR_RETURN(PasskeySample s, gen->Sample(i));
                  return ToMaskedSample(s);
                },
                StrCat(o_.work_dir, "/post_training_", LayoutKey(layout)), sink_));
  result_.timings.push_back({"post_training", r.seconds, r.tokens});
  return absl::OkStatus();
}

absl::Status Pipeline::Evaluate() {
  if (!o_.evaluation.enabled) return absl::OkStatus();
  FM_RETURN_IF_ERROR(CheckCancelled("evaluation"));
  const auto t0 = std::chrono::steady_clock::now();
  const Decoder& student = student_copy_ ? *student_copy_ : *teacher_;
  MorphableModel hybrid(&student, &branches_);
  MorphableModel teacher(teacher_.get(), &branches_);
  const int64_t L = teacher_->config().num_layers;
  std::vector<LayerMix> full(L);
  std::vector<LayerMix> mixes = LayoutMixes(result_.layouts[0].FullAttentionHeads(), teacher_->config().num_heads);
  EvaluationResult e;
  int64_t step = 0;
  const int64_t total = static_cast<int64_t>(o_.evaluation.needle_lengths.size()) + 1;
  for (int64_t len : o_.evaluation.needle_lengths) {
    FM_ASSIGN_OR_RETURN(auto gen, Passkeys(DataSplit::kHeldOut, len, len, o_.seed * 7919 + 37));
    std::vector<MaskedSample> samples;
    for (int64_t i = 0; i < o_.evaluation.needle_samples; ++i) {
      FM_ASSIGN_OR_RETURN(PasskeySample s, gen->Sample(i));
      samples.push_back(ToMaskedSample(s));
    }
    FM_ASSIGN_OR_RETURN(RecallScore t, PasskeyRecall(teacher, full, samples));
    FM_ASSIGN_OR_RETURN(RecallScore h, PasskeyRecall(hybrid, mixes, samples));
    e.needles.push_back({len, t.passkey_recall, h.passkey_recall, t.token_accuracy, h.token_accuracy});
    ProgressEvent ev{Stage::kEvaluation, "needle", ++step, total, 0, Seconds(t0), {}, {}, ""};
    ev.metrics = {{"length", static_cast<double>(len)}, {"teacher_recall", t.passkey_recall},
                  {"hybrid_recall", h.passkey_recall}};
    sink_.OnProgress(ev);
  }
  const int64_t T = o_.calibration.sequence_length;
  const int64_t windows = std::max<int64_t>(1, o_.evaluation.held_out_tokens / T);
  FM_ASSIGN_OR_RETURN(at::Tensor ids, TextBatch(DataSplit::kHeldOut, 0, windows, T, o_.seed * 7919 + 41));
  FM_ASSIGN_OR_RETURN(TextScore ts, TextAgreement(*teacher_, hybrid, mixes, ids));
  e.teacher_ppl = ts.teacher_ppl;
  e.hybrid_ppl = ts.model_ppl;
  e.kl = ts.kl;
  e.text_tokens = ts.tokens;
  ProgressEvent ev{Stage::kEvaluation, "text", ++step, total, 0, Seconds(t0), {}, {}, ""};
  ev.metrics = {{"teacher_ppl", ts.teacher_ppl}, {"hybrid_ppl", ts.model_ppl}, {"kl", ts.kl}};
  sink_.OnProgress(ev);
  result_.evaluation = e;
  result_.timings.push_back({"evaluation", Seconds(t0), 0});
  return absl::OkStatus();
}

absl::Status Pipeline::Export() {
  FM_RETURN_IF_ERROR(CheckCancelled("export"));
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = teacher_->config();
  nlohmann::ordered_json rec;
  rec["format_version"] = 1;
  rec["engine"] = kEngineVersion;
  rec["source"] = {{"path", o_.model_path}, {"sha256", source_sha256_}, {"architecture", ArchitectureName(c.arch)}};
  rec["method"] = SelectionMethodName(o_.method);
  rec["branch_kind"] = BranchKindName(o_.branch);
  rec["seed"] = o_.seed;
  rec["num_layers"] = c.num_layers;
  rec["num_heads"] = c.num_heads;
  rec["layout"] = LayoutJson(result_.layouts[0]);
  rec["layouts"] = nlohmann::ordered_json::array();
  for (const Layout& l : result_.layouts) rec["layouts"].push_back(LayoutJson(l));
  rec["selection"] = selection_record_;
  rec["calibration"] = {{"relative_error_before", result_.calibration_error_before},
                        {"relative_error_after", result_.calibration_error_after}};
  if (result_.evaluation) {
    nlohmann::ordered_json needles = nlohmann::ordered_json::array();
    for (const NeedleResult& n : result_.evaluation->needles)
      needles.push_back({{"length", n.length},
                         {"teacher_recall", n.teacher_recall},
                         {"hybrid_recall", n.hybrid_recall},
                         {"teacher_token_accuracy", n.teacher_token_accuracy},
                         {"hybrid_token_accuracy", n.hybrid_token_accuracy}});
    rec["evaluation"] = {{"needle", needles},
                         {"teacher_perplexity", result_.evaluation->teacher_ppl},
                         {"hybrid_perplexity", result_.evaluation->hybrid_ppl},
                         {"kl_teacher_hybrid", result_.evaluation->kl},
                         {"text_tokens", result_.evaluation->text_tokens}};
  }
  nlohmann::ordered_json timings = nlohmann::ordered_json::array();
  for (const StageTiming& t : result_.timings)
    timings.push_back({{"stage", t.stage}, {"seconds", t.seconds}, {"tokens", t.tokens}});
  rec["timings"] = timings;
  rec["settings"] = {{"device", o_.device},
                     {"dtype", o_.dtype},
                     {"calibration", {{"train_tokens", o_.calibration.train_tokens},
                                      {"sequence_length", o_.calibration.sequence_length},
                                      {"batch_sequences", o_.calibration.batch_sequences},
                                      {"learning_rate", o_.calibration.learning_rate}}},
                     {"gates", {{"train_tokens", o_.gates.train_tokens},
                                {"learning_rate_start", o_.gates.learning_rate_start},
                                {"learning_rate_end", o_.gates.learning_rate_end},
                                {"sparsity_lambda", o_.gates.sparsity_lambda},
                                {"min_context", o_.gates.min_context},
                                {"max_context", o_.gates.max_context},
                                {"passkeys_per_sample", o_.gates.passkeys_per_sample},
                                {"words_per_passkey", o_.gates.words_per_passkey}}},
                     {"post_training", {{"distill_tokens", o_.post_training.distill_tokens},
                                        {"long_context_tokens", o_.post_training.long_context_tokens},
                                        {"learning_rate", o_.post_training.learning_rate},
                                        {"train_all", o_.post_training.train_all}}}};
  result_.report_json = rec.dump(2);
  ExportRequest req;
  req.source_path = o_.model_path;
  req.config = &c;
  req.weights = student_copy_ ? &student_copy_->weights() : &teacher_->weights();
  req.branches = &branches_;
  req.layout = &result_.layouts[0];
  req.branch = branch_settings_;
  req.dtype = o_.export_dtype;
  req.max_shard_bytes = o_.max_shard_bytes;
  req.conversion_record = rec;
  req.model_card = ModelCard(o_, result_, c);
  FM_RETURN_IF_ERROR(ExportHybrid(req, o_.output_dir));
  result_.output_dir = o_.output_dir;
  FM_RETURN_IF_ERROR(WriteExportProbe());
  result_.timings.push_back({"export", Seconds(t0), 0});
  Message(Stage::kExport, StrCat("wrote ", o_.output_dir));
  return absl::OkStatus();
}

absl::StatusOr<ConversionResult> Pipeline::Run() {
  try {
    FM_RETURN_IF_ERROR(Load());
    FM_RETURN_IF_ERROR(Calibrate());
    FM_RETURN_IF_ERROR(Select());
    FM_RETURN_IF_ERROR(PostTrainStage());
    FM_RETURN_IF_ERROR(Evaluate());
    FM_RETURN_IF_ERROR(Export());
  } catch (const c10::Error& e) {
    return absl::InternalError(StrCat("engine error: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(StrCat("engine error: ", e.what()));
  }
  return std::move(result_);
}

}  // namespace

absl::StatusOr<ConversionResult> RunConversion(ConversionOptions options, ProgressSink* sink) {
  NullProgressSink null_sink;
  Pipeline p(std::move(options), sink ? *sink : null_sink);
  return p.Run();
}

}  // namespace fm
