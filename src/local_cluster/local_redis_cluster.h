// LocalRedisCluster: a real Redis Cluster of N masters (no replicas) on loopback, for the
// cluster tier's tests and benchmark (no GoogleTest in here).
//
// Start() picks free ports (port and port + 10000, the cluster bus, both below the ephemeral
// range), writes a config per node into its own temp directory (cluster-enabled, no
// persistence, cluster-require-full-coverage no so that the other masters keep serving while
// one is down), spawns redis-server processes with fork/exec, waits for each to answer PING,
// forms the cluster with `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`
// and waits until every node reports cluster_state:ok and sees every other one connected.
//
// Cleanup: the destructor SIGKILLs and reaps every node and removes the directories; each
// node also gets PR_SET_PDEATHSIG=SIGKILL, so none outlives a test process that crashes or is
// killed. Thread-safety: none (one test thread drives it).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

namespace kvault::local_cluster {

struct LocalRedisClusterOptions {
  int masters = 3;
  std::string password;        // requirepass on every node when not empty
  int node_timeout_ms = 2000;  // cluster-node-timeout
};

// A reply, flattened for tests: arrays become their elements' texts, integers their decimal.
struct LocalRedisReply {
  bool nil = false;
  long long integer = 0;
  std::string text;
  std::vector<std::string> elements;
};

class LocalRedisCluster {
 public:
  // The running cluster, or nullptr and *error saying why (what was started is stopped).
  static std::unique_ptr<LocalRedisCluster> Start(const LocalRedisClusterOptions& options, std::string* error);
  ~LocalRedisCluster();
  LocalRedisCluster(const LocalRedisCluster&) = delete;
  LocalRedisCluster& operator=(const LocalRedisCluster&) = delete;

  int size() const { return static_cast<int>(nodes_.size()); }
  int port(int i) const { return nodes_[i].port; }
  std::string address(int i) const { return "127.0.0.1:" + std::to_string(nodes_[i].port); }
  std::vector<std::string> Seeds() const;
  bool alive(int i) const { return nodes_[i].pid > 0; }

  // SIGKILL, then reaped.
  void KillNode(int i);
  // Starts node i again on its port and directory (it rejoins with its nodes.conf) and waits
  // until the cluster is healthy again.
  bool RestartNode(int i, std::string* error);
  // SIGSTOP / SIGCONT: the node accepts connections (the kernel does) but answers nothing.
  void PauseNode(int i);
  void ResumeNode(int i);
  // Waits until every live node says cluster_state:ok, all slots assigned, and sees every
  // other node connected and not failing.
  bool WaitHealthy(int timeout_ms, std::string* error);

  // One command on node i over a fresh connection (binary-safe arguments). False, with
  // *error, on a connection failure or an error reply.
  bool Command(int i, const std::vector<std::string>& args, LocalRedisReply* reply, std::string* error);
  // The index of the node that serves `slot` according to node `ask`'s CLUSTER SLOTS; -1 if none.
  int NodeOfSlot(int slot, int ask = 0);
  std::string NodeId(int i);  // CLUSTER MYID

 private:
  struct NodeProcess {
    int port = 0;
    std::string dir;
    pid_t pid = -1;
  };
  explicit LocalRedisCluster(const LocalRedisClusterOptions& options);
  bool Boot(std::string* error);
  bool SpawnNode(int i, std::string* error);
  bool WaitPing(int i, int timeout_ms, std::string* error);
  bool NodeHealthy(int i, std::string* why);
  std::string LogTail(int i) const;

  LocalRedisClusterOptions options_;
  std::string dir_;  // mkdtemp under $TMPDIR (or /tmp); removed by the destructor
  std::string server_bin_, cli_bin_;
  std::vector<NodeProcess> nodes_;
};

}  // namespace kvault::local_cluster
