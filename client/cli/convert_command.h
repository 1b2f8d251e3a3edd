// `flashmorph convert`: the whole conversion offline, in this process (no server), with progress bars and the
// layout table at the end. Exit codes: 0 success, 1 the conversion failed, 2 bad arguments, 130 cancelled (Ctrl-C;
// rerun the same command to resume from the stage checkpoints).
#pragma once

#include <CLI/CLI.hpp>

namespace fm {

// Adds the subcommand to `app`; `run` is set to the function to call when it was chosen.
void AddConvertCommand(CLI::App& app, std::function<int()>& run);

}  // namespace fm
