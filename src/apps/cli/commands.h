// Subcommands of the `kvault` command. Each Add* registers its subcommand and callback; the
// callback stores its exit code, returned by ExitCode().
#pragma once

#include <CLI/CLI.hpp>

namespace kvault::cli {

void AddBenchCommand(CLI::App& app);    // kvault bench store
void AddInspectCommand(CLI::App& app);  // kvault inspect DIR
void AddDemoCommand(CLI::App& app);     // kvault demo
void AddReplayCommand(CLI::App& app);   // kvault replay --trace FILE
void AddServeCommand(CLI::App& app);    // kvault serve [--model M | --random-model tiny]
void AddTokenizeCommand(CLI::App& app); // kvault tokenize --model M < text
int ExitCode();
void SetExitCode(int code);

}  // namespace kvault::cli
