// Times the foundation pieces on one model file and prints one JSON object (bench/foundation_bench.py runs the
// reference side and prints the table): tokenizer throughput, GGUF dequantisation, model load, prefill/decode, and
// safetensors write (ours fsyncs the file and its directory; the reference does not) and read of the loaded weights.
//   fm_foundation_bench --gguf FILE --text FILE --scratch DIR [--prefill 256] [--decode 32]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "worker/engine/formats/safetensors.h"
#include "worker/engine/formats/safetensors_writer.h"
#include "worker/engine/gguf/gguf_dequant.h"
#include "worker/engine/gguf/gguf_file.h"
#include "worker/engine/model/generate.h"
#include "worker/engine/model/tensor_bridge.h"
#include "worker/engine/model/gguf_tokenizer.h"
#include "worker/engine/model/weight_loader.h"

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

template <typename F>
double Best(int reps, F&& f) {  // best of `reps` wall times, in seconds
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    auto t = Clock::now();
    f();
    best = std::min(best, Since(t));
  }
  return best;
}

[[noreturn]] void Die(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.ToString()).c_str());
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fm_foundation_bench"};
  std::string gguf_path, text_path, scratch;
  int64_t prefill = 256, decode = 32;
  app.add_option("--gguf", gguf_path)->required();
  app.add_option("--text", text_path)->required();
  app.add_option("--scratch", scratch)->required();
  app.add_option("--prefill", prefill);
  app.add_option("--decode", decode);
  CLI11_PARSE(app, argc, argv);
  nlohmann::json out;
  out["threads"] = at::get_num_threads();

  std::ifstream tin(text_path, std::ios::binary);
  std::stringstream ss;
  ss << tin.rdbuf();
  const std::string text = ss.str();

  auto file = fm::GgufFile::Open(gguf_path);
  if (!file.ok()) Die(file.status());

  // Tokenizer: a fresh tokenizer (empty word cache) and a warm one.
  {
    auto tok = fm::TokenizerFromGguf(*file);
    if (!tok.ok()) Die(tok.status());
    size_t n = 0;
    double cold = Best(1, [&] { n = (*tok)->Encode(text, false).size(); });
    double warm = Best(3, [&] { n = (*tok)->Encode(text, false).size(); });
    out["tokenizer"] = {{"bytes", text.size()}, {"tokens", n}, {"cold_s", cold}, {"warm_s", warm}};
  }
  // GGUF dequantisation of every tensor into one reused buffer (1 thread, and all threads).
  {
    uint64_t max_elems = 0, total = 0;
    for (const auto& t : file->tensors()) {
      max_elems = std::max(max_elems, t.num_elements);
      total += t.num_elements;
    }
    std::vector<float> buf(max_elems);
    auto run = [&](int threads) {
      for (const auto& t : file->tensors()) {
        absl::Status s = fm::DequantizeTensor(*file, t, absl::Span<float>(buf.data(), t.num_elements),
                                              fm::DequantOptions{.num_threads = threads});
        if (!s.ok()) Die(s);
      }
    };
    out["dequant"] = {{"values", total}, {"one_thread_s", Best(3, [&] { run(1); })},
                      {"all_threads_s", Best(3, [&] { run(0); })}};
  }
  // Model load, prefill and decode (float32 on CPU).
  std::unique_ptr<fm::Decoder> model;
  out["load_s"] = Best(1, [&] {
    auto m = fm::LoadDecoder(gguf_path);
    if (!m.ok()) Die(m.status());
    model = std::move(*m);
  });
  {
    at::manual_seed(0);
    at::Tensor ids = at::randint(0, model->config().vocab_size, {1, prefill}, at::kLong);
    auto fwd = [&] {
      auto r = model->Forward(ids);
      if (!r.ok()) Die(r.status());
    };
    fwd();  // warm-up
    double prefill_s = Best(3, fwd);
    std::vector<int64_t> prompt(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + prefill);
    fm::GenerateOptions g;
    g.max_new_tokens = decode;
    double gen_s = Best(2, [&] {
      auto r = fm::GenerateGreedy(*model, prompt, g);
      if (!r.ok()) Die(r.status());
    });
    // Generation = one prefill + `decode` one-token steps (the first token comes from the prefill).
    out["forward"] = {{"prefill_tokens", prefill}, {"prefill_s", prefill_s}, {"decode_tokens", decode},
                      {"decode_s", std::max(gen_s - prefill_s, 1e-9)}};
  }
  // safetensors: write the model's weights with our writer, then open (mmap + validate) and read every byte.
  {
    std::filesystem::create_directories(scratch);
    const std::string path = scratch + "/model.safetensors";
    std::vector<at::Tensor> keep;
    std::vector<fm::TensorToWrite> tensors;
    auto add = [&](const std::string& name, const at::Tensor& t) {
      if (!t.defined()) return;
      at::Tensor c = t.contiguous();
      keep.push_back(c);
      tensors.push_back({name, fm::DType::kF32, c.sizes().vec(), c.data_ptr(), static_cast<size_t>(c.nbytes())});
    };
    const auto& w = model->weights();
    add("model.embed_tokens.weight", w.embed_tokens);
    add("model.norm.weight", w.final_norm);
    for (size_t l = 0; l < w.layers.size(); ++l) {
      const auto& L = w.layers[l];
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "q", L.q_proj); add(p + "k", L.k_proj); add(p + "v", L.v_proj); add(p + "o", L.o_proj);
      add(p + "gate", L.gate_proj); add(p + "up", L.up_proj); add(p + "down", L.down_proj);
      add(p + "n1", L.input_norm); add(p + "n2", L.post_attention_norm);
    }
    uint64_t bytes = 0;
    for (const auto& t : tensors) bytes += t.nbytes;
    double write_s = Best(2, [&] {
      absl::Status s = fm::WriteSafetensors(path, tensors);
      if (!s.ok()) Die(s);
    });
    double sum = 0;
    double open_s = 0;
    double read_s = Best(3, [&] {
      auto t0 = Clock::now();
      auto f = fm::SafetensorsFile::Open(path);
      if (!f.ok()) Die(f.status());
      open_s = Since(t0);
      for (const auto& info : f->tensors()) {  // zero-copy tensors over the mapping, summed as the reference does
        auto t = fm::TensorFromView(f->View(info), f->file());
        if (!t.ok()) Die(t.status());
        sum += t->sum().item<double>();
      }
    });
    out["safetensors"] = {{"bytes", bytes}, {"write_s", write_s}, {"open_s", open_s}, {"read_all_s", read_s},
                          {"checksum", sum}};
    std::filesystem::remove(path);
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
