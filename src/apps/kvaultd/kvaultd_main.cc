// kvaultd: the node's shared KV-cache store (the same as `kvault daemon`), without LibTorch.
#include <CLI/CLI.hpp>

#include "apps/kvaultd/daemon_cli.h"

int main(int argc, char** argv) {
  CLI::App app{"kvaultd: one KV-cache store per node, shared by every engine process"};
  int exit_code = 0;
  kvault::AddDaemonFlags(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
