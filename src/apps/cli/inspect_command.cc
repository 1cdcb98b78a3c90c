#include <cstdio>
#include <nlohmann/json.hpp>

#include "kvault/kv_codec.h"
#include "apps/cli/commands.h"
#include "store/inspect.h"

namespace kvault::cli {
namespace {

int exit_code = 0;

int RunInspect(const std::string& dir, bool json, bool list_entries) {
  auto report = InspectDir(dir);
  if (!report.ok()) {
    std::fprintf(stderr, "kvault inspect: %s\n", report.status().ToString().c_str());
    return 2;
  }
  const InspectReport& r = *report;
  if (json) {
    nlohmann::ordered_json j;
    j["dir"] = dir;
    j["segments"] = nlohmann::json::array();
    for (const auto& s : r.segments) {
      j["segments"].push_back({{"id", s.id}, {"name", s.name}, {"bytes", s.bytes}, {"indexed", s.indexed},
                               {"records", s.records}, {"torn", s.torn}, {"corrupt", s.corrupt}});
    }
    j["records"] = nlohmann::json::array();
    for (const auto& e : r.records) {
      j["records"].push_back({{"segment", e.segment}, {"offset", e.offset}, {"key", e.header.key.Hex()},
                              {"parent", e.header.parent.Hex()}, {"namespace", e.header.ns_id.Hex()},
                              {"tokens", e.header.tokens}, {"codec", KvCodecName(e.header.codec)},
                              {"payload_bytes", e.header.payload_bytes},
                              {"layout", e.header.layout.ToString()}, {"seq", e.header.seq}, {"ok", e.payload_ok}});
    }
    j["total_records"] = r.records.size();
    j["payload_bytes"] = r.payload_bytes;
    j["raw_bytes"] = r.raw_bytes;
    j["encoded_records"] = r.encoded_records;
    j["torn"] = r.torn;
    j["corrupt"] = r.corrupt;
    j["clean"] = r.clean();
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%-18s %12s %8s %8s %6s %8s\n", "segment", "bytes", "indexed", "records", "torn", "corrupt");
    for (const auto& s : r.segments) {
      std::printf("%-18s %12llu %8s %8llu %6llu %8llu\n", s.name.c_str(), static_cast<unsigned long long>(s.bytes),
                  s.indexed ? "yes" : "no", static_cast<unsigned long long>(s.records),
                  static_cast<unsigned long long>(s.torn), static_cast<unsigned long long>(s.corrupt));
    }
    if (list_entries) {
      std::printf("\n%-14s %-14s %-14s %6s %5s %10s %s\n", "key", "parent", "namespace", "tokens", "codec", "bytes",
                  "checksum");
      for (const auto& e : r.records) {
        std::printf("%-14s %-14s %-14s %6u %5s %10llu %s\n", e.header.key.ShortHex().c_str(),
                    e.header.parent.ShortHex().c_str(), e.header.ns_id.ShortHex().c_str(), e.header.tokens,
                    KvCodecName(e.header.codec), static_cast<unsigned long long>(e.header.payload_bytes),
                    e.payload_ok ? "ok" : "BAD");
      }
    }
    std::printf("\n%zu records (%llu compressed), %llu payload bytes (%llu decoded), %llu torn, %llu corrupt: %s\n",
                r.records.size(), static_cast<unsigned long long>(r.encoded_records),
                static_cast<unsigned long long>(r.payload_bytes), static_cast<unsigned long long>(r.raw_bytes),
                static_cast<unsigned long long>(r.torn),
                static_cast<unsigned long long>(r.corrupt), r.clean() ? "clean" : "DAMAGED");
  }
  return r.clean() ? 0 : 1;
}

}  // namespace

int ExitCode() { return exit_code; }
void SetExitCode(int code) { exit_code = code; }

void AddInspectCommand(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto entries = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("inspect", "List the segments and records of a disk-tier directory and verify every checksum (exit 1 if any is damaged)");
  cmd->add_option("DIR", *dir, "Disk-tier directory, e.g. ./kvault-data")->required();
  cmd->add_flag("--json", *json, "Print JSON");
  cmd->add_flag("--entries", *entries, "List every record, not only segments");
  cmd->callback([=] { SetExitCode(RunInspect(*dir, *json, *entries)); });
}

}  // namespace kvault::cli
