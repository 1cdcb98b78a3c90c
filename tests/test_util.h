// Helpers shared by the kvault tests and the crash writer (no GoogleTest dependency here).
//
// The central idea: a chunk's payload is derived from its key alone (a PRNG seeded by the
// key bytes), so any reader, in any process, can verify every byte it gets back knowing only
// the key and the payload size. A wrong, stale or torn payload can never pass for right.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kvault/key.h"
#include "kvault/layout.h"
#include "kvault/options.h"
#include "kvault/store.h"

namespace kvtest {

using kvault::ChunkKey;
using kvault::KvLayout;
using kvault::Namespace;
using kvault::Store;

// A fresh directory from mkdtemp under $TMPDIR (or /tmp), removed with everything in it
// when the object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "kvault");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A small layout: the defaults give 4 layers x 2 kv heads x 32 dims in bf16, 16 tokens per
// chunk, so a full chunk is 16 KiB.
KvLayout MakeLayout(kvault::DType dtype = kvault::DType::kBF16, uint32_t layers = 4, uint32_t kv_heads = 2,
                    uint32_t head_dim = 32, uint32_t chunk_tokens = 16,
                    kvault::RopeMode rope = kvault::RopeMode::kPostRope);

// A namespace whose model fingerprint is SHA-256 of `model`.
Namespace MakeNamespace(const KvLayout& layout, const std::string& tenant = "tenant-a",
                        const std::string& model = "model-a");

// `n` pseudo-random token ids in [0, 2^17), the same for the same seed in every process.
std::vector<uint32_t> MakeTokens(uint64_t seed, size_t n);

// The payload of the chunk `key`: `bytes` bytes from a PRNG seeded by the key.
std::vector<std::byte> PayloadFor(const ChunkKey& key, size_t bytes);

// Puts every chunk of `tokens` (a trailing partial chunk too) with payloads from PayloadFor.
// Returns the first failing status; `spans` receives the chunks put.
kvault::Status PutChain(Store& store, const Namespace& ns, std::span<const uint32_t> tokens,
                        std::vector<kvault::ChunkSpan>* spans = nullptr);

// Like PutChain, but each chunk is written layer by layer in a shuffled order with probability 1/layered_one_in
// (else one Put), and such a writer is dropped without Commit with probability
// 1/abandon_one_in (0: never). Exercises every write path with the same payloads.
kvault::Status PutChainMixed(Store& store, const Namespace& ns, std::span<const uint32_t> tokens,
                             std::mt19937_64& rng, uint32_t layered_one_in, uint32_t abandon_one_in);

enum class Check { kMatch, kMissing, kMismatch };
const char* CheckName(Check c);

// Opens chunk `key` and compares what it holds with PayloadFor(key, ...): the token count,
// the size, the whole payload (ReadRange), each layer (ReadLayer) and the pieces
// (ForEachPiece). kMissing when OpenChunk fails (kNotFound or any other error: `status`
// receives it); kMismatch on any wrong byte or size (`why` says what).
Check CheckChunk(Store& store, const Namespace& ns, const ChunkKey& key, uint32_t tokens,
                 kvault::Tier* served_from = nullptr, std::string* why = nullptr,
                 kvault::Status* status = nullptr);

// Sum of the sizes of the regular files directly under `dir`.
uint64_t DirBytes(const std::string& dir);

// Options for a small store under `dir`: 16 KiB pages, 8 MiB DRAM, 64 MiB SSD in 256 KiB
// segments, no huge pages.
kvault::StoreOptions SmallOptions(const std::string& dir);

// Chains written by tests/crash_writer.cc and checked by tests/crash_test.cc: the token
// stream of chain `seed` is one of three shared 40-token "system prompts" followed by a
// session-specific tail, so chains share whole chunks and end in partial chunks.
KvLayout CrashLayout();
Namespace CrashNamespace();
std::vector<uint32_t> CrashChainTokens(uint64_t seed);
// The options both sides open the crash store with.
kvault::StoreOptions CrashOptions(const std::string& dir);

}  // namespace kvtest
