// A kvaultd child process for tests that need the real executable: started with `args`
// (the binary is KVAULT_DAEMON_BIN, which the test target defines), ready once it printed its
// JSON ready line; killed (SIGKILL) if still running when destroyed. One owner thread.
#pragma once

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

extern char** environ;

namespace kvtest {

class DaemonProcess {
 public:
  explicit DaemonProcess(std::vector<std::string> args) {
    args.insert(args.begin(), KVAULT_DAEMON_BIN);
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    out_ = fds[0];
    ready_ = NextJson(20000);
  }
  ~DaemonProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      Wait();
    }
    if (out_ >= 0) close(out_);
  }
  const nlohmann::json& ready() const { return ready_; }
  bool started() const { return ready_.is_object() && ready_.value("event", "") == "ready"; }
  // Sends `sig` and returns the exit status (128 + signal when killed by one).
  int Signal(int sig) {
    kill(pid_, sig);
    return Wait();
  }
  nlohmann::json NextJson(int timeout_ms) {
    std::string line;
    char ch;
    for (;;) {
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, timeout_ms) != 1 || read(out_, &ch, 1) != 1) return nullptr;
      if (ch == '\n') break;
      line.push_back(ch);
    }
    return nlohmann::json::parse(line, nullptr, false);
  }

 private:
  int Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  pid_t pid_ = -1;
  int out_ = -1;
  nlohmann::json ready_;
};

}  // namespace kvtest
