#include "local_cluster/local_redis_cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

namespace kvault::local_cluster {
namespace {

using Clock = std::chrono::steady_clock;

// Listening ports come from [kFirstPort, kLastPort); the bus port (+10000) stays below 32768,
// where Linux starts handing out ephemeral ports by default.
constexpr int kFirstPort = 10000;
constexpr int kLastPort = 22700;
constexpr int kBusOffset = 10000;

std::string FindInPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

bool CanBind(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

// Spawns argv[0] (a full path) with stdout and stderr appended to `log_path`; the child dies
// with this process. Returns the pid, or -1.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  // Child: async-signal-safe calls only.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);
  const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  const int null = ::open("/dev/null", O_RDONLY);
  if (log >= 0) {
    ::dup2(log, 1);
    ::dup2(log, 2);
  }
  if (null >= 0) ::dup2(null, 0);
  ::execv(args[0], args.data());
  ::_exit(127);
}

// Waits up to timeout_ms for `pid` to exit; its exit status, or -1 on a timeout (then it is killed).
int WaitExit(pid_t pid, int timeout_ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0) return -1;
    if (Clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// A redis.conf argument in double quotes (backslash and quote escaped).
std::string ConfQuote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string ReadTail(const std::string& path, size_t bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return all.size() > bytes ? all.substr(all.size() - bytes) : all;
}

void Flatten(const redisReply* r, LocalRedisReply* out) {
  switch (r->type) {
    case REDIS_REPLY_NIL:
      out->nil = true;
      break;
    case REDIS_REPLY_INTEGER:
      out->integer = r->integer;
      out->text = std::to_string(r->integer);
      break;
    case REDIS_REPLY_ARRAY:
      for (size_t i = 0; i < r->elements; ++i) {
        LocalRedisReply e;
        Flatten(r->element[i], &e);
        out->elements.push_back(e.text);
      }
      break;
    default:
      out->text.assign(r->str, r->len);
      break;
  }
}

}  // namespace

LocalRedisCluster::LocalRedisCluster(const LocalRedisClusterOptions& options) : options_(options) {}

LocalRedisCluster::~LocalRedisCluster() {
  for (int i = 0; i < size(); ++i) KillNode(i);
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::unique_ptr<LocalRedisCluster> LocalRedisCluster::Start(const LocalRedisClusterOptions& options,
                                                                std::string* error) {
  std::unique_ptr<LocalRedisCluster> f(new LocalRedisCluster(options));
  if (!f->Boot(error)) {
    std::fprintf(stderr, "LocalRedisCluster: %s\n", error->c_str());
    return nullptr;  // the destructor stops whatever started
  }
  return f;
}

bool LocalRedisCluster::Boot(std::string* error) {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/kvault-redis-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    *error = "mkdtemp " + tmpl + " failed";
    return false;
  }
  dir_ = tmpl;
  server_bin_ = FindInPath("redis-server");
  cli_bin_ = FindInPath("redis-cli");
  if (server_bin_.empty() || cli_bin_.empty()) {
    *error = "redis-server and redis-cli must be installed and on PATH (Debian: apt-get install redis-server "
             "redis-tools; scripts/setup.sh does it)";
    return false;
  }
  std::mt19937 rng(static_cast<unsigned>(::getpid()) ^ static_cast<unsigned>(Clock::now().time_since_epoch().count()));
  std::uniform_int_distribution<int> pick(kFirstPort, kLastPort - 1);
  nodes_.resize(static_cast<size_t>(options_.masters));
  for (int i = 0; i < size(); ++i) {
    nodes_[i].dir = dir_ + "/node-" + std::to_string(i);
    ::mkdir(nodes_[i].dir.c_str(), 0755);
    // A port might be taken between the check and the server's bind: try a few.
    bool started = false;
    std::string why;
    for (int attempt = 0; attempt < 5 && !started; ++attempt) {
      int port = 0;
      for (int tries = 0; tries < 1000 && port == 0; ++tries) {
        const int p = pick(rng);
        bool used = false;
        for (int j = 0; j < i; ++j) used |= nodes_[j].port == p;
        if (!used && CanBind(p) && CanBind(p + kBusOffset)) port = p;
      }
      if (port == 0) {
        *error = "no free port pair found";
        return false;
      }
      nodes_[i].port = port;
      started = SpawnNode(i, &why) && WaitPing(i, 10000, &why);
      if (!started) KillNode(i);
    }
    if (!started) {
      *error = "node " + std::to_string(i) + " did not start: " + why;
      return false;
    }
  }

  std::vector<std::string> create = {cli_bin_, "--cluster", "create"};
  for (int i = 0; i < size(); ++i) create.push_back(address(i));
  create.insert(create.end(), {"--cluster-replicas", "0", "--cluster-yes"});
  if (!options_.password.empty()) create.insert(create.end(), {"-a", options_.password, "--no-auth-warning"});
  const std::string create_log = dir_ + "/cluster-create.log";
  const pid_t pid = Spawn(create, create_log);
  const int rc = pid > 0 ? WaitExit(pid, 60000) : -1;
  if (rc != 0) {
    *error = "redis-cli --cluster create failed (" + std::to_string(rc) + "): " + ReadTail(create_log, 2000);
    return false;
  }
  return WaitHealthy(30000, error);
}

bool LocalRedisCluster::SpawnNode(int i, std::string* error) {
  NodeProcess& n = nodes_[i];
  const std::string conf = n.dir + "/redis.conf";
  {
    std::ofstream out(conf, std::ios::trunc);
    out << "port " << n.port << "\n"
        << "bind 127.0.0.1\n"
        << "protected-mode no\n"
        << "daemonize no\n"
        << "dir " << n.dir << "\n"
        << "logfile \"\"\n"
        << "cluster-enabled yes\n"
        << "cluster-config-file nodes.conf\n"
        << "cluster-node-timeout " << options_.node_timeout_ms << "\n"
        << "cluster-require-full-coverage no\n"
        << "appendonly no\n"
        << "save \"\"\n";
    if (!options_.password.empty()) {
      out << "requirepass " << ConfQuote(options_.password) << "\nmasterauth " << ConfQuote(options_.password) << "\n";
    }
    if (!out) {
      *error = "cannot write " + conf;
      return false;
    }
  }
  n.pid = Spawn({server_bin_, conf}, n.dir + "/redis.log");
  if (n.pid <= 0) {
    n.pid = -1;
    *error = "fork failed";
    return false;
  }
  return true;
}

bool LocalRedisCluster::WaitPing(int i, int timeout_ms, std::string* error) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string last;
  while (Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(nodes_[i].pid, &status, WNOHANG) == nodes_[i].pid) {
      nodes_[i].pid = -1;
      *error = "redis-server exited: " + LogTail(i);
      return false;
    }
    LocalRedisReply reply;
    if (Command(i, {"PING"}, &reply, &last) && reply.text == "PONG") return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  *error = "no PONG in " + std::to_string(timeout_ms) + " ms (" + last + "): " + LogTail(i);
  return false;
}

std::string LocalRedisCluster::LogTail(int i) const { return ReadTail(nodes_[i].dir + "/redis.log", 1500); }

std::vector<std::string> LocalRedisCluster::Seeds() const {
  std::vector<std::string> seeds;
  for (int i = 0; i < size(); ++i) seeds.push_back(address(i));
  return seeds;
}

void LocalRedisCluster::KillNode(int i) {
  NodeProcess& n = nodes_[i];
  if (n.pid <= 0) return;
  ::kill(n.pid, SIGKILL);
  int status = 0;
  ::waitpid(n.pid, &status, 0);
  n.pid = -1;
}

void LocalRedisCluster::PauseNode(int i) {
  if (nodes_[i].pid > 0) ::kill(nodes_[i].pid, SIGSTOP);
}

void LocalRedisCluster::ResumeNode(int i) {
  if (nodes_[i].pid > 0) ::kill(nodes_[i].pid, SIGCONT);
}

bool LocalRedisCluster::RestartNode(int i, std::string* error) {
  KillNode(i);
  if (!SpawnNode(i, error) || !WaitPing(i, 10000, error)) return false;
  return WaitHealthy(30000, error);
}

bool LocalRedisCluster::NodeHealthy(int i, std::string* why) {
  LocalRedisReply info;
  if (!Command(i, {"CLUSTER", "INFO"}, &info, why)) return false;
  const std::string known = "cluster_known_nodes:" + std::to_string(size());
  if (info.text.find("cluster_state:ok") == std::string::npos ||
      info.text.find("cluster_slots_assigned:16384") == std::string::npos ||
      info.text.find(known) == std::string::npos) {
    *why = "node " + std::to_string(i) + ": " + info.text.substr(0, 200);
    return false;
  }
  // CLUSTER NODES: <id> <addr> <flags> <master> <ping> <pong> <epoch> <link-state> <slots...>
  LocalRedisReply nodes;
  if (!Command(i, {"CLUSTER", "NODES"}, &nodes, why)) return false;
  std::istringstream lines(nodes.text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string id, addr, flags, master, ping, pong, epoch, link;
    fields >> id >> addr >> flags >> master >> ping >> pong >> epoch >> link;
    if (flags.find("fail") != std::string::npos || flags.find("handshake") != std::string::npos ||
        (flags.find("myself") == std::string::npos && link != "connected")) {
      *why = "node " + std::to_string(i) + " sees: " + line;
      return false;
    }
  }
  return true;
}

bool LocalRedisCluster::WaitHealthy(int timeout_ms, std::string* error) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string why;
  while (Clock::now() < deadline) {
    bool healthy = true;
    for (int i = 0; i < size() && healthy; ++i) {
      if (alive(i)) healthy = NodeHealthy(i, &why);
    }
    if (healthy) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  *error = "cluster not healthy after " + std::to_string(timeout_ms) + " ms: " + why;
  return false;
}

bool LocalRedisCluster::Command(int i, const std::vector<std::string>& args, LocalRedisReply* reply,
                                  std::string* error) {
  *reply = LocalRedisReply();
  timeval tv{2, 0};
  redisContext* c = redisConnectWithTimeout("127.0.0.1", nodes_[i].port, tv);
  if (c == nullptr || c->err != 0) {
    *error = c != nullptr ? c->errstr : "out of memory";
    if (c != nullptr) redisFree(c);
    return false;
  }
  redisSetTimeout(c, tv);
  auto run = [&](const std::vector<std::string>& argv, LocalRedisReply* out) {
    std::vector<const char*> ptrs;
    std::vector<size_t> lens;
    for (const std::string& a : argv) {
      ptrs.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(argv.size()), ptrs.data(), lens.data()));
    if (r == nullptr) {
      *error = c->errstr;
      return false;
    }
    const bool ok = r->type != REDIS_REPLY_ERROR;
    if (!ok) *error = std::string(r->str, r->len);
    Flatten(r, out);
    freeReplyObject(r);
    return ok;
  };
  bool ok = true;
  if (!options_.password.empty()) {
    LocalRedisReply auth;
    ok = run({"AUTH", options_.password}, &auth);
  }
  ok = ok && run(args, reply);
  redisFree(c);
  return ok;
}

int LocalRedisCluster::NodeOfSlot(int slot, int ask) {
  // CLUSTER SHARDS would be nicer; CLUSTER NODES lists each master's slot ranges.
  LocalRedisReply nodes;
  std::string error;
  if (!Command(ask, {"CLUSTER", "NODES"}, &nodes, &error)) return -1;
  std::istringstream lines(nodes.text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string id, addr, flags, master, ping, pong, epoch, link, range;
    fields >> id >> addr >> flags >> master >> ping >> pong >> epoch >> link;
    while (fields >> range) {
      if (range.starts_with("[")) continue;  // a slot being migrated or imported
      const size_t dash = range.find('-');
      const int first = std::stoi(range.substr(0, dash));
      const int last = dash == std::string::npos ? first : std::stoi(range.substr(dash + 1));
      if (slot < first || slot > last) continue;
      // addr is "ip:port@busport"
      const int port = std::stoi(addr.substr(addr.find(':') + 1));
      for (int i = 0; i < size(); ++i) {
        if (nodes_[i].port == port) return i;
      }
    }
  }
  return -1;
}

std::string LocalRedisCluster::NodeId(int i) {
  LocalRedisReply reply;
  std::string error;
  return Command(i, {"CLUSTER", "MYID"}, &reply, &error) ? reply.text : "";
}

}  // namespace kvault::local_cluster
