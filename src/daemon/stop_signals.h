// Foreground servers (kvaultd, kvault serve) stop on SIGTERM or SIGINT: the main thread blocks
// both before starting any thread (threads inherit the mask, so no other thread takes them)
// and then waits for one. SIGPIPE is ignored: a peer that closes is a failed write, not a death.
#pragma once

#include <signal.h>

namespace kvault {

inline sigset_t BlockStopSignals() {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return stop;
}

// Returns the stop signal that arrived. REQUIRES: BlockStopSignals() on this thread first.
inline int WaitForStopSignal(const sigset_t& stop) {
  int sig = 0;
  sigwait(&stop, &sig);
  return sig;
}

}  // namespace kvault
