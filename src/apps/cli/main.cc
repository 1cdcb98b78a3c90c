// The `kvault` command: one binary, subcommands for each job.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "apps/cli/commands.h"
#include "apps/kvaultd/daemon_cli.h"

int main(int argc, char** argv) {
  CLI::App app{"kvault: KV-cache storage for LLM inference (store instead of recompute)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("kvault ") + KVAULT_VERSION);
  kvault::cli::AddBenchCommand(app);
  kvault::cli::AddInspectCommand(app);
  kvault::cli::AddDemoCommand(app);
  kvault::cli::AddReplayCommand(app);
  kvault::cli::AddServeCommand(app);
  kvault::cli::AddTokenizeCommand(app);
  int daemon_exit = 0;
  CLI::App* daemon = app.add_subcommand("daemon", "kvaultd: the node's shared store, in the foreground until SIGTERM");
  kvault::AddDaemonFlags(*daemon, &daemon_exit);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (app.got_subcommand(daemon)) return daemon_exit;
  return kvault::cli::ExitCode();
}
