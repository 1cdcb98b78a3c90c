#include "apps/kvaultd/daemon_cli.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "daemon/daemon.h"
#include "kvault/kv_codec.h"
#include "daemon/stop_signals.h"

namespace kvault {
namespace {

struct DaemonFlags {
  DaemonOptions d;
  double t1_gib = 1.0;
  double t2_gib = 16.0;
  std::string tokens_file;
  uint32_t max_message_mib = 256;
  uint64_t message_budget_mib = 1024;
  std::string cluster_kind;
  std::vector<std::string> redis_seeds;
  double t3_budget_gib = 0;
  uint64_t t3_queue_mib = 64;
  std::string t1_codec = "none", t2_codec = "none", t3_codec = "none";
};

// The tiers' codecs (docs/STORE.md, "Compressed lower tiers"): T1 always holds raw KV.
bool ParseTierCodecs(const DaemonFlags& f, StoreOptions* store) {
  KvCodec t1 = KvCodec::kNone;
  Status st = ParseKvCodec(f.t1_codec, &t1);
  if (st.ok() && t1 != KvCodec::kNone) {
    st = Status::InvalidArgument("--t1-codec must be none: T1 holds KV exactly as put; use --t2-codec / --t3-codec");
  }
  if (st.ok()) st = ParseKvCodec(f.t2_codec, &store->t2_codec);
  if (st.ok()) st = ParseKvCodec(f.t3_codec, &store->t3_codec);
  if (!st.ok()) {
    std::cerr << "kvaultd: " << st.ToString() << "\n";
    return false;
  }
  return true;
}

int RunDaemon(DaemonFlags& f) {
  DaemonOptions o = f.d;
  o.store.t1_bytes = static_cast<uint64_t>(f.t1_gib * (1ull << 30));
  o.store.t2_bytes = static_cast<uint64_t>(f.t2_gib * (1ull << 30));
  if (!ParseTierCodecs(f, &o.store)) return 2;
  if (f.max_message_mib == 0 || f.max_message_mib > 1024) {
    std::cerr << "kvaultd: --max-message-mib must be in 1..1024\n";
    return 2;
  }
  o.max_message_bytes = static_cast<uint32_t>(uint64_t{f.max_message_mib} << 20);
  if (f.message_budget_mib == 0 || f.message_budget_mib > (1u << 20)) {
    std::cerr << "kvaultd: --message-budget-mib must be in 1..1048576\n";
    return 2;
  }
  o.message_budget_bytes = f.message_budget_mib << 20;
  if (o.max_connections == 0 || o.max_handles_per_connection == 0 || o.hello_timeout_ms <= 0 || o.frame_timeout_ms <= 0 || o.io_timeout_ms <= 0) {
    std::cerr << "kvaultd: --max-connections, --max-handles-per-connection and the --*-timeout-ms flags must be positive\n";
    return 2;
  }
  o.log = [](const std::string& line) { std::cerr << "kvaultd: " + line + "\n" << std::flush; };
  o.store.t3.kind = f.cluster_kind;
  o.store.t3.redis_seeds = f.redis_seeds;
  o.store.t3.budget_bytes = static_cast<uint64_t>(f.t3_budget_gib * (1ull << 30));
  o.store.t3.queue_bytes = f.t3_queue_mib << 20;
  if (!f.tokens_file.empty()) {
    std::ifstream in(f.tokens_file);
    if (!in) {
      std::cerr << "kvaultd: cannot read tokens file " << f.tokens_file << "\n";
      return 2;
    }
    std::stringstream text;
    text << in.rdbuf();
    auto tokens = ParseTokensFile(text.str());
    if (!tokens.ok()) {
      std::cerr << "kvaultd: " << f.tokens_file << ": " << tokens.status().ToString() << "\n";
      return 2;
    }
    o.tokens = std::move(tokens.value());
  }

  const sigset_t stop = BlockStopSignals();  // before the daemon starts its threads

  auto daemon = Daemon::Start(o);
  if (!daemon.ok()) {
    std::cerr << "kvaultd: cannot start: " << daemon.status().ToString() << "\n";
    return 1;
  }
  nlohmann::ordered_json ready;
  ready["event"] = "ready";
  ready["socket"] = (*daemon)->socket_path();
  ready["dir"] = o.store.dir;
  ready["metrics_port"] = (*daemon)->metrics_port();
  ready["tcp_port"] = (*daemon)->tcp_port();
  ready["tenants"] = o.tokens.size();
  ready["pid"] = getpid();
  std::cout << ready.dump() << std::endl;

  const int sig = WaitForStopSignal(stop);
  std::cerr << "kvaultd: " << (sig == SIGTERM ? "SIGTERM" : "SIGINT") << ": flushing and stopping\n";
  Status st = (*daemon)->Stop();
  nlohmann::ordered_json done;
  done["event"] = "stopped";
  done["flush"] = st.ToString();
  done["store"] = nlohmann::json::parse((*daemon)->StoreStatistics().ToJson());
  std::cout << done.dump() << std::endl;
  return st.ok() ? 0 : 1;
}

}  // namespace

void AddDaemonFlags(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<DaemonFlags>();
  app.set_config("--config", "", "TOML file whose keys are these flags' long names (e.g. t1-gib = 8)");
  app.add_option("--dir", f->d.store.dir, "Data directory (T2 segments and the socket)")->capture_default_str();
  app.add_option("--socket", f->d.socket_path, "Unix socket path (default: DIR/kvaultd.sock)");
  app.add_option("--socket-mode", f->d.socket_mode, "Permissions of the socket file (octal digits as decimal: 432 = 0660)")
      ->capture_default_str();
  app.add_option("--metrics-port", f->d.metrics_port, "HTTP port of /metrics and /healthz (0: any free port, -1: off)")
      ->capture_default_str();
  app.add_option("--metrics-host", f->d.metrics_host, "Address the HTTP endpoint binds")->capture_default_str();
  app.add_option("--tcp-listen", f->d.tcp_listen, "host:port for clients on other nodes (off by default; needs --tokens-file)");
  app.add_option("--tokens-file", f->tokens_file, "File of 'tenant token [shm]' lines: every client must present a token");
  app.add_option("--t1-gib,--dram-gib", f->t1_gib, "T1 (shared memory) capacity in GiB")->capture_default_str();
  app.add_option("--t2-gib,--ssd-gib", f->t2_gib, "T2 capacity in GiB (0: no disk tier)")->capture_default_str();
  app.add_option("--policy", f->d.store.policy, "Eviction policy: lru, fifo, s3fifo or aware")->capture_default_str();
  app.add_option("--t1-codec", f->t1_codec, "T1 codec: none only (T1 holds KV exactly as put)")->capture_default_str();
  app.add_option("--t2-codec", f->t2_codec, "How T2 stores KV: none, int8 or int4 (encoded when written to disk)")
      ->capture_default_str();
  app.add_option("--t3-codec", f->t3_codec, "How T3 stores KV: none, int8 or int4 (encoded when published)")
      ->capture_default_str();
  app.add_option("--decode-threads", f->d.store.decode_threads,
                 "Threads that decode one encoded chunk coming back into T1")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_flag("--prefault-t1,--prefault-dram", f->d.store.prefault_t1, "Touch all of T1 at start (steady latency; commits the memory)");
  app.add_option("--max-message-mib", f->max_message_mib, "Largest protocol message accepted")->capture_default_str();
  app.add_option("--max-connections", f->d.max_connections, "Most client connections at once")->capture_default_str();
  app.add_option("--max-handles-per-connection", f->d.max_handles_per_connection,
                 "Most open readers and writers of one connection")
      ->capture_default_str();
  app.add_option("--message-budget-mib", f->message_budget_mib,
                 "Daemon-wide memory for request and inline reply buffers beyond 256 KiB each (docs/DAEMON.md, Limits)")
      ->capture_default_str();
  app.add_option("--hello-timeout-ms", f->d.hello_timeout_ms, "A new connection must complete its hello within this")
      ->capture_default_str();
  app.add_option("--frame-timeout-ms", f->d.frame_timeout_ms,
                 "A request frame, once started, must arrive whole within this (idle connections may stay)")
      ->capture_default_str();
  app.add_option("--io-timeout-ms", f->d.io_timeout_ms, "A client that stops reading its replies this long is dropped")
      ->capture_default_str();
  app.add_option("--cluster", f->cluster_kind, "Cluster tier (T3): redis or shared-dir (default: off)")
      ->check(CLI::IsMember({"", "redis", "shared-dir"}));
  app.add_option("--redis-seeds", f->redis_seeds, "Redis Cluster seed nodes host:port (with --cluster redis)")->delimiter(',');
  app.add_option("--redis-password", f->d.store.t3.redis_password, "Redis AUTH password (with --cluster redis)");
  app.add_option("--redis-key-prefix", f->d.store.t3.redis_key_prefix, "Prefix of every key this daemon writes to Redis");
  app.add_option("--shared-dir", f->d.store.t3.shared_dir, "Shared directory (with --cluster shared-dir)");
  app.add_option("--t3-timeout-ms", f->d.store.t3.timeout_ms, "Longest a T3 call may take")->capture_default_str();
  app.add_option("--t3-ttl-s", f->d.store.t3.ttl_seconds, "T3 values expire after this long (0: never)")
      ->capture_default_str();
  app.add_option("--t3-budget-gib", f->t3_budget_gib, "Bytes this daemon may hold in T3 (0: unlimited)")->capture_default_str();
  app.add_option("--t3-queue-mib", f->t3_queue_mib, "T3 write-behind queue; chunks beyond it are not published")
      ->capture_default_str();
  app.callback([f, exit_code] { *exit_code = RunDaemon(*f); });
}

}  // namespace kvault
