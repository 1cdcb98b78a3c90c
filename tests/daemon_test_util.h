// Helpers shared by the in-process daemon tests: a daemon over a small store, started or failed
// as a test expectation.
#pragma once

#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "daemon/daemon.h"
#include "test_util.h"

namespace kvtest {

// A daemon's options over SmallOptions(dir), without huge pages.
inline kvault::DaemonOptions SmallDaemonOptions(const std::string& dir) {
  kvault::DaemonOptions o;
  o.store = SmallOptions(dir);
  o.store.huge_pages = false;
  return o;
}

// The started daemon, or null with a test failure that says why.
inline std::unique_ptr<kvault::Daemon> StartDaemon(const kvault::DaemonOptions& o) {
  auto d = kvault::Daemon::Start(o);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return d.ok() ? std::move(d.value()) : nullptr;
}

}  // namespace kvtest
