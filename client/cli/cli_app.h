// The `flashmorph` command line: global connection flags and the service subcommands (submit, watch, get, list,
// cancel, download, layout) registered on a CLI11 app, and RunCli(), which parses and runs one command with the
// given output streams (main() and the tests use it; `convert` is added by main() through `extra`).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "client/cli/commands.h"
#include "client/cli/connection.h"

namespace fm::client {

// Text of the exit codes, shown in --help and client/README.md.
extern const char kExitCodesHelp[];

// Adds the global flags (--server, --token, --token-file, --tls, --tls-ca, --tls-cert, --tls-key, --timeout) and the
// service subcommands to `app`; `run` is set to the chosen command. `retry` is the retry policy of every call.
void AddServiceCommands(CLI::App& app, const CliIo& io, const RetryPolicy& retry, std::function<int()>& run);

using ExtraCommands = std::function<void(CLI::App& app, std::function<int()>& run)>;

// Parses `args` (without the program name) and runs the command. Returns the exit code (2 for usage errors; --help
// prints to io.out and returns 0).
int RunCli(const std::vector<std::string>& args, const CliIo& io, const RetryPolicy& retry = {},
           const ExtraCommands& extra = {});

}  // namespace fm::client
