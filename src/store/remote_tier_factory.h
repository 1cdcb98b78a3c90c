// OpenRemoteTier: the cluster tier (T3) that StoreOptions::t3 names.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kvault/options.h"
#include "store/remote_tier.h"

namespace kvault {

// Opens the backend `options.kind` names ("redis" or "shared-dir") with the options that
// apply to it. kInvalidArgument for a configuration error: an empty or unknown kind, missing
// seeds or directory. Otherwise what the backend's Open says
// (the store treats those as "T3 unreachable" and runs without it). `env`: the file
// operations of a shared-directory tier (nullptr: Env::Default()), so the store's Env (a test's
// fault injection) reaches T3 too.
Result<std::unique_ptr<RemoteTier>> OpenRemoteTier(const T3Options& options, Env* env = nullptr);

// The seeds as single host:port strings: comma-separated elements split, blanks dropped.
std::vector<std::string> SplitSeeds(const std::vector<std::string>& seeds);

}  // namespace kvault
