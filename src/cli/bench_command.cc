#include "cli/commands.h"
#include "store_bench.h"

namespace kvault::cli {

void AddBenchCommand(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks that print JSON next to the hardware limit");
  bench->require_subcommand(1);
  auto opt = std::make_shared<StoreBenchOptions>();
  CLI::App* store = bench->add_subcommand("store", "T1/T2 bandwidth, lookup rate and index rebuild of the store");
  store->add_option("--dir", opt->dir, "Directory on the disk to measure (T2 and the O_DIRECT probe)")->capture_default_str();
  store->add_flag("--quick", opt->quick, "A run of about 20 s instead of about 2 minutes");
  store->add_flag("--json", opt->json, "Print one JSON object instead of a table");
  store->add_option("--rebuild-entries", opt->rebuild_entries, "Entries for the index-rebuild measurement (default 20k quick, 100k full)");
  store->callback([opt] { SetExitCode(RunStoreBench(*opt)); });
}

}  // namespace kvault::cli
