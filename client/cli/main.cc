// `flashmorph`: the FlashMorph command line. `convert` runs a conversion offline in this process; the service
// commands (submit, watch, get, list, cancel, download, layout) talk to flashmorphd.
#include <functional>

#include <CLI/CLI.hpp>

#include "client/cli/convert_command.h"

int main(int argc, char** argv) {
  CLI::App app{"FlashMorph: convert Transformer LLMs into hybrid full/linear-attention models"};
  app.require_subcommand(1);
  std::function<int()> run;
  fm::AddConvertCommand(app, run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return run ? run() : 2;
}
