// flashmorph-model: look inside a checkpoint and run it. A developer's tool for the loaders and the forward pass:
//   flashmorph-model inspect  PATH                 config, tensor count, parameters
//   flashmorph-model generate PATH --prompt TEXT   greedy continuation with timing
//   flashmorph-model tokenize PATH --text TEXT     token ids and pieces
// PATH is a Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json) or a GGUF file.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include <CLI/CLI.hpp>

#include "worker/engine/common/status_macros.h"
#include "worker/engine/gguf/gguf_file.h"
#include "worker/engine/model/generate.h"
#include "worker/engine/model/gguf_tokenizer.h"
#include "worker/engine/model/weight_loader.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace fm {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path) {
  if (std::filesystem::is_directory(path)) return Tokenizer::FromJsonFile(path + "/tokenizer.json");
  FM_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(path));
  return TokenizerFromGguf(file);
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.ToString()).c_str());
  return 1;
}

int Inspect(const std::string& path) {
  auto t0 = Clock::now();
  auto model = LoadDecoder(path);
  if (!model.ok()) return Fail(model.status());
  const ModelConfig& c = (*model)->config();
  int64_t params = (*model)->weights().embed_tokens.numel();
  if (!c.tie_word_embeddings) params += (*model)->weights().lm_head.numel();
  for (const auto& l : (*model)->weights().layers)
    for (const at::Tensor* t : {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj,
                                &l.input_norm, &l.post_attention_norm, &l.q_norm, &l.k_norm, &l.q_bias, &l.k_bias,
                                &l.v_bias, &l.o_bias, &l.gate_bias, &l.up_bias, &l.down_bias})
      if (t->defined()) params += t->numel();
  std::printf("path            %s\n", path.c_str());
  std::printf("architecture    %s\n", std::string(ArchitectureName(c.arch)).c_str());
  std::printf("layers          %lld\n", static_cast<long long>(c.num_layers));
  std::printf("hidden / ffn    %lld / %lld\n", static_cast<long long>(c.hidden_size),
              static_cast<long long>(c.intermediate_size));
  std::printf("heads (q / kv)  %lld / %lld x %lld\n", static_cast<long long>(c.num_heads),
              static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.head_dim));
  std::printf("vocab           %lld%s\n", static_cast<long long>(c.vocab_size),
              c.tie_word_embeddings ? " (tied embeddings)" : "");
  std::printf("rope theta      %g\n", c.rope.theta);
  std::printf("parameters      %.1f M\n", params / 1e6);
  std::printf("load time       %.2f s\n", Seconds(t0));
  return 0;
}

int Generate(const std::string& path, const std::string& prompt, int64_t max_new_tokens, bool chat) {
  auto t0 = Clock::now();
  auto model = LoadDecoder(path);
  if (!model.ok()) return Fail(model.status());
  auto tok = LoadTokenizer(path);
  if (!tok.ok()) return Fail(tok.status());
  const double load_s = Seconds(t0);
  std::string text = chat ? "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n" : prompt;
  std::vector<int32_t> ids32 = (*tok)->Encode(text, /*add_special_tokens=*/true);
  std::vector<int64_t> ids(ids32.begin(), ids32.end());
  GenerateOptions g;
  g.max_new_tokens = max_new_tokens;
  g.stop_token = (*tok)->eos_id();
  if (chat) {
    if (auto end = (*tok)->TokenToId("<|im_end|>")) g.stop_token = *end;
  }
  auto t1 = Clock::now();
  auto out = GenerateGreedy(**model, ids, g);
  if (!out.ok()) return Fail(out.status());
  const double gen_s = Seconds(t1);
  std::vector<int32_t> continuation(out->begin() + static_cast<int64_t>(ids.size()), out->end());
  std::cout << text << (*tok)->Decode(continuation, /*skip_special_tokens=*/true) << "\n";
  std::fprintf(stderr, "[%zu prompt + %zu new tokens; load %.2f s, generate %.2f s (%.1f tokens/s), %d threads]\n",
               ids.size(), continuation.size(), load_s, gen_s, continuation.size() / gen_s, at::get_num_threads());
  return 0;
}

int Tokenize(const std::string& path, const std::string& text) {
  auto tok = LoadTokenizer(path);
  if (!tok.ok()) return Fail(tok.status());
  for (int32_t id : (*tok)->Encode(text, /*add_special_tokens=*/true)) {
    auto piece = (*tok)->IdToToken(id);
    std::printf("%6d  %s\n", id, piece ? std::string(*piece).c_str() : "?");
  }
  return 0;
}

}  // namespace
}  // namespace fm

int main(int argc, char** argv) {
  CLI::App app{"flashmorph-model: inspect and run a checkpoint (HF directory or GGUF file)"};
  app.require_subcommand(1);
  std::string path, prompt, text;
  int64_t max_new_tokens = 32;
  int threads = 0;
  bool chat = false;
  app.add_option("--threads", threads, "CPU threads for torch (0: torch's default)");
  auto* inspect = app.add_subcommand("inspect", "print the model's configuration");
  inspect->add_option("path", path, "checkpoint directory or .gguf file")->required();
  auto* generate = app.add_subcommand("generate", "greedy continuation of a prompt");
  generate->add_option("path", path, "checkpoint directory or .gguf file")->required();
  generate->add_option("--prompt", prompt, "text to continue")->required();
  generate->add_option("--max-new-tokens", max_new_tokens, "tokens to generate")->check(CLI::Range(1, 100000));
  generate->add_flag("--chat", chat, "wrap the prompt in the ChatML template (<|im_start|>user ...)");
  auto* tokenize = app.add_subcommand("tokenize", "print token ids and pieces");
  tokenize->add_option("path", path, "checkpoint directory or .gguf file")->required();
  tokenize->add_option("--text", text, "text to tokenize")->required();
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) at::set_num_threads(threads);
  if (*inspect) return fm::Inspect(path);
  if (*generate) return fm::Generate(path, prompt, max_new_tokens, chat);
  return fm::Tokenize(path, text);
}
