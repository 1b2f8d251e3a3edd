// `flashmorph`: the FlashMorph command line. The service commands (submit, watch, get, list, cancel, download,
// layout) talk to flashmorphd and need only gRPC (FLASHMORPH_CLI_SERVICE); `convert` runs a conversion offline in
// this process and needs the LibTorch engine (FLASHMORPH_WITH_TORCH). Exit codes: see --help.
#include <unistd.h>

#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#if FLASHMORPH_WITH_TORCH
#include "client/cli/convert_command.h"
#endif
#if FLASHMORPH_CLI_SERVICE
#include "client/cli/cli_app.h"
#endif

int main(int argc, char** argv) {
#if FLASHMORPH_CLI_SERVICE
  fm::client::ExtraCommands extra;
#if FLASHMORPH_WITH_TORCH
  extra = [](CLI::App& app, std::function<int()>& run) { fm::AddConvertCommand(app, run); };
#endif
  const fm::client::CliIo io{std::cout, std::cerr, isatty(STDOUT_FILENO) != 0};
  return fm::client::RunCli(std::vector<std::string>(argv + 1, argv + argc), io, {}, extra);
#else
  CLI::App app{"FlashMorph: convert Transformer LLMs into hybrid full/linear-attention models", "flashmorph"};
  app.require_subcommand(1);
  std::function<int()> run;
  fm::AddConvertCommand(app, run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return run ? run() : 2;
#endif
}
