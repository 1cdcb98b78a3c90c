// Process set-up shared by the commands that run the engine (demo, replay --engine).
#pragma once

#include <string>

#include "kvault/status.h"

namespace kvault::apps {

// Sets LibTorch's intra-op threads and OpenBLAS's own pool to `threads` (0: every core but
// one, which the engine's loader and saver threads and the store's write-behind use while the
// model computes). Returns the count in effect.
int SetComputeThreads(int threads);

// Empties a store directory before a run: removes kvault's segment files and LOCK; refuses
// (kInvalidArgument) when it holds anything else, so a mistyped path never loses user files.
// `flag` names the option in the message; `can_keep`: the command has --keep-data (the
// message suggests it). A missing directory is fine.
Status WipeStoreDir(const std::string& dir, const std::string& flag = "--data-dir", bool can_keep = true);

}  // namespace kvault::apps
