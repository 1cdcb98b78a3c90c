// The `kvault` command: one binary, subcommands for each job.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"kvault: KV-cache storage for LLM inference (store instead of recompute)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("kvault ") + KVAULT_VERSION);
  kvault::cli::AddBenchCommand(app);
  kvault::cli::AddInspectCommand(app);
  kvault::cli::AddDemoCommand(app);
  kvault::cli::AddReplayCommand(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return kvault::cli::ExitCode();
}
