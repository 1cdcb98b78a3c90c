// The command line of kvaultd, shared by `kvault daemon` and the standalone `kvaultd`.
#pragma once

#include <CLI/CLI.hpp>

namespace kvault {

// Registers the daemon's flags (and --config FILE: a TOML file whose keys are the flags'
// long names) on `app`; when `app` is parsed and run, serves until SIGTERM or SIGINT and
// stores the exit code in *exit_code.
void AddDaemonFlags(CLI::App& app, int* exit_code);

}  // namespace kvault
