#include "client/cli/cli_app.h"

#include <cstdlib>
#include <map>
#include <memory>
#include <optional>

namespace fm::client {
namespace {

// Sets `dst` only when the option is given, so unset flags leave the spec file's value.
template <typename T>
CLI::Option* AddOptional(CLI::App* app, const std::string& name, std::optional<T>& dst, const std::string& help) {
  return app->add_option_function<T>(
      name, [&dst](const T& v) { dst = v; }, help);
}

struct GlobalFlags {
  ConnectionOptions connection;
};

// Opens the connection and runs `body`; a connection error is printed and exits 2.
int WithConnection(const GlobalFlags& g, const CliIo& io, const RetryPolicy& retry,
                   const std::function<int(Connection&)>& body) {
  ConnectionOptions o = g.connection;
  o.retry = retry;
  auto conn = Connection::Open(o);
  if (!conn.ok()) return PrintError(io, conn.status());
  return body(**conn);
}

}  // namespace

const char kExitCodesHelp[] =
    "Exit codes: 0 success (watch: the job SUCCEEDED); 1 the watched job FAILED; 2 usage, RPC, file or integrity "
    "error (printed as \"error: <CODE>: <message>\"); 3 the watched job was CANCELLED.";

void AddServiceCommands(CLI::App& app, const CliIo& io, const RetryPolicy& retry, std::function<int()>& run) {
  auto g = std::make_shared<GlobalFlags>();
  const char* env_server = std::getenv("FLASHMORPH_SERVER");
  if (env_server != nullptr && *env_server != '\0') g->connection.server = env_server;
  const char* env_token = std::getenv("FLASHMORPH_TOKEN");
  if (env_token != nullptr) g->connection.token = env_token;
  app.add_option("--server", g->connection.server, "flashmorphd address host:port (env FLASHMORPH_SERVER)")
      ->capture_default_str();
  app.add_option("--token", g->connection.token, "Bearer token (env FLASHMORPH_TOKEN)");
  app.add_option("--token-file", g->connection.token_file, "File holding the bearer token");
  app.add_flag("--tls", g->connection.tls, "Use TLS with the system's root certificates");
  app.add_option("--tls-ca", g->connection.tls_ca, "PEM root certificates (implies TLS)");
  app.add_option("--tls-cert", g->connection.tls_cert, "PEM client certificate chain (with --tls-key)");
  app.add_option("--tls-key", g->connection.tls_key, "PEM client private key");
  app.add_option("--timeout", g->connection.timeout_seconds, "Deadline of each unary call in seconds (0 = none)")
      ->capture_default_str();

  // submit ----------------------------------------------------------------------------------------------------------
  {
    auto f = std::make_shared<SubmitFlags>();
    CLI::App* c = app.add_subcommand("submit", "Create a conversion job (prints its name, jobs/<id>)");
    c->add_option("--spec", f->spec_file,
                  "ConversionSpec file, YAML or JSON (proto3 JSON field names); flags override it");
    c->add_option("--model", f->model, "Model directory (or file:// URI) as the workers see it");
    c->add_option("--revision", f->revision, "Model revision");
    c->add_option("--source-sha256", f->source_sha256, "Expected source checksum");
    auto layers = std::make_shared<std::vector<std::string>>();
    auto ratios = std::make_shared<std::vector<std::string>>();
    auto heads = std::make_shared<std::vector<std::string>>();
    CLI::Option* o_layers = c->add_option("--fa-layers", *layers,
                                          "Full-attention layers K (repeatable: one layout each; "
                                          "the first budget is exported)")
                                ->allow_extra_args(false);
    CLI::Option* o_ratio = c->add_option("--fa-ratio", *ratios, "Full-attention ratio, e.g. 0.25 or 25% (repeatable)")
                               ->allow_extra_args(false);
    CLI::Option* o_heads = c->add_option("--fa-heads", *heads, "Full-attention heads (--method head; repeatable)")
                               ->allow_extra_args(false);
    c->add_option("--method", f->method, "flashmorph | uniform | nll | head");
    c->add_option("--branch", f->branch, "lightning | gla | gated_deltanet");
    AddOptional(c, "--seed", f->seed, "Seed of every random choice");
    AddOptional(c, "--priority", f->priority, "Priority in [-100, 100]");
    c->add_option("--label", f->labels, "Label key=value (repeatable)")->allow_extra_args(false);
    c->add_option("--deadline", f->deadline, "RFC 3339 time or a duration from now (90m, 2h)");
    c->add_option("--tenant", f->tenant, "Tenant that owns the job (default: yours)");
    c->add_option("--request-id", f->request_id, "Idempotency key (default: a fresh UUIDv4)");
    AddOptional(c, "--gpus", f->gpus, "GPUs the job needs (> 1: data-parallel gates, layer-parallel calibration)");
    c->add_flag("--shard-layers", f->shard_layers, "With --gpus > 1: split the model's layers over the GPUs");
    AddOptional(c, "--calibration-tokens", f->calibration_tokens, "Tokens per layer for branch calibration");
    AddOptional(c, "--gate-tokens", f->gate_tokens, "Tokens for gate optimisation");
    AddOptional(c, "--min-context", f->min_context, "Shortest passkey sample for gates");
    AddOptional(c, "--max-context", f->max_context, "Longest passkey sample for gates");
    AddOptional(c, "--passkeys", f->passkeys, "Passkeys per sample");
    AddOptional(c, "--gate-batch", f->gate_batch, "Gate samples per step (dealt to the GPUs with --gpus > 1)");
    AddOptional(c, "--lambda", f->lambda, "Sparsity weight of the gate loss (default 0.1)");
    AddOptional(c, "--distill-tokens", f->distill_tokens, "Post-training distillation tokens (0 = skip)");
    AddOptional(c, "--long-context-tokens", f->long_context_tokens, "Long-context fine-tuning tokens (0 = skip)");
    c->add_flag("--train-all", f->train_all, "Post-train every weight (default: the branches only)");
    AddOptional(c, "--held-out-tokens", f->held_out_tokens, "Held-out tokens for KL/perplexity (0 = skip)");
    c->add_option("--needle-context", f->needle_context, "Needle context length (repeatable)")->allow_extra_args(false);
    AddOptional(c, "--needle-samples", f->needle_samples, "Needle samples per context length");
    c->add_option("--data", f->data, "Training text as workers see it: .jsonl or .u16/.u32 token file");
    c->add_option("--data-format", f->data_format, "auto | jsonl | u16 | u32")->capture_default_str();
    c->add_option("--export-dtype", f->export_dtype, "bfloat16 | float16 | float32");
    AddOptional(c, "--max-shard-bytes", f->max_shard_bytes, "Largest safetensors shard");
    c->add_flag("--json", f->json, "Print the Operation (and, with --watch, the events) as JSON");
    c->add_flag("--watch", f->watch, "Watch the job after creating it (exit code as for watch)");
    c->callback([c, f, layers, ratios, heads, o_layers, o_ratio, o_heads, g, io, retry, &run] {
      // Budgets in command-line order.
      std::map<const CLI::Option*, size_t> next;
      for (const CLI::Option* o : c->parse_order()) {
        if (o == o_layers && next[o] < layers->size())
          f->budgets.emplace_back(BudgetFlag::kLayers, (*layers)[next[o]++]);
        if (o == o_ratio && next[o] < ratios->size()) f->budgets.emplace_back(BudgetFlag::kRatio, (*ratios)[next[o]++]);
        if (o == o_heads && next[o] < heads->size()) f->budgets.emplace_back(BudgetFlag::kHeads, (*heads)[next[o]++]);
      }
      run = [f, g, io, retry] {
        return WithConnection(*g, io, retry, [&](Connection& conn) { return RunSubmit(*f, conn, io); });
      };
    });
  }
  // watch -----------------------------------------------------------------------------------------------------------
  {
    auto f = std::make_shared<WatchFlags>();
    CLI::App* c = app.add_subcommand("watch", "Follow a job's progress until it ends (exit code from its result)");
    c->add_option("job", f->job, "jobs/<id> or <id>")->required();
    c->add_option("--after-sequence", f->after_sequence, "Only events after this sequence number");
    c->add_flag("--json", f->json, "One JSON JobEvent per line");
    c->callback([f, g, io, retry, &run] {
      run = [f, g, io, retry] {
        return WithConnection(*g, io, retry, [&](Connection& conn) { return RunWatch(*f, conn, io); });
      };
    });
  }
  // get / cancel / layout -------------------------------------------------------------------------------------------
  struct JobArgs {
    std::string job;
    bool json = false;
  };
  using JobFn = int (*)(const std::string&, bool, Connection&, const CliIo&);
  const std::vector<std::tuple<const char*, const char*, JobFn>> job_commands = {
      {"get", "Show a job", &RunGet},
      {"cancel", "Cancel a job", &RunCancel},
      {"layout", "Print the layouts of a SUCCEEDED job: selected layers, layer types, scores, margin, near ties",
       &RunLayout},
  };
  for (const auto& [name, help, fn] : job_commands) {
    auto f = std::make_shared<JobArgs>();
    CLI::App* c = app.add_subcommand(name, help);
    c->add_option("job", f->job, "jobs/<id> or <id>")->required();
    c->add_flag("--json", f->json, "Print JSON");
    JobFn call = fn;
    c->callback([f, g, io, retry, call, &run] {
      run = [f, g, io, retry, call] {
        return WithConnection(*g, io, retry, [&](Connection& conn) { return call(f->job, f->json, conn, io); });
      };
    });
  }
  // list ------------------------------------------------------------------------------------------------------------
  {
    auto f = std::make_shared<ListFlags>();
    CLI::App* c = app.add_subcommand("list", "List jobs, newest first");
    c->add_option("--state", f->states, "Only jobs in this state (repeatable)")->allow_extra_args(false);
    c->add_option("--tenant", f->tenant, "Only jobs of this tenant");
    c->add_option("--page-size", f->page_size, "Jobs per page (0 = server default)");
    c->add_option("--page-token", f->page_token, "Page to read (from a previous list)");
    c->add_flag("--all", f->all, "Follow the pages to the end");
    c->add_flag("--json", f->json, "Print the ListConversionJobsResponse as JSON");
    c->callback([f, g, io, retry, &run] {
      run = [f, g, io, retry] {
        return WithConnection(*g, io, retry, [&](Connection& conn) { return RunList(*f, conn, io); });
      };
    });
  }
  // download --------------------------------------------------------------------------------------------------------
  {
    auto job = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    CLI::App* c =
        app.add_subcommand("download", "Download a SUCCEEDED job's model directory (resumable, sha256-checked)");
    c->add_option("job", *job, "jobs/<id> or <id>")->required();
    c->add_option("--out", *out, "Directory to write into")->required();
    c->callback([job, out, g, io, retry, &run] {
      run = [job, out, g, io, retry] {
        return WithConnection(*g, io, retry, [&](Connection& conn) { return RunDownload(*job, *out, conn, io); });
      };
    });
  }
}

int RunCli(const std::vector<std::string>& args, const CliIo& io, const RetryPolicy& retry,
           const ExtraCommands& extra) {
  CLI::App app{"FlashMorph: convert Transformer LLMs into hybrid full/linear-attention models", "flashmorph"};
  app.require_subcommand(1);
  app.fallthrough();  // global flags also after the subcommand
  app.footer(kExitCodesHelp);
  std::function<int()> run;
  AddServiceCommands(app, io, retry, run);
  if (extra) extra(app, run);
  std::vector<const char*> argv = {"flashmorph"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e, io.out, io.err) == 0 ? kExitOk : kExitError;
  }
  return run ? run() : kExitError;
}

}  // namespace fm::client
