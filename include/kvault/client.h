// kvault::Client: the Store API served by kvaultd, the node's shared store (docs/DAEMON.md).
//
// Control goes over a Unix socket (or TCP to another node); data goes through the daemon's
// T1 shared memory when the daemon grants it: OpenChunk pins the chunk in the daemon and the
// reader copies straight out of the mapping, BeginPut reserves a slot the writer fills in
// place. Otherwise the bytes travel inline on the socket.
//
// Degrade, don't fail: when the daemon goes away the client reconnects by itself (with
// backoff) and meanwhile answers like a store that holds nothing: lookups miss, OpenChunk is
// kNotFound, BeginPut is kUnavailable (callers skip the save), hints are dropped. Readers
// opened before the outage stay readable (they hold the old mapping); writers from an old
// connection fail at Commit.
//
// Thread-safety: every method may be called from any thread at once (requests are serialized
// on one connection). ChunkReader/ChunkWriter handles are owned by one thread at a time and
// must not outlive the Client.
#pragma once

#include <memory>
#include <string>

#include "kvault/store.h"

namespace kvault {

struct ClientOptions {
  // "unix:/path/kvaultd.sock", "/path/kvaultd.sock" or "tcp://host:port".
  std::string address = "./kvault-data/kvaultd.sock";
  std::string token;                 // required when the daemon has tokens configured
  bool shared_memory = true;         // ask for the T1 mapping (granted to trusted local clients)
  int timeout_ms = 10000;            // a reply that takes longer drops the connection (a miss)
  int reconnect_min_ms = 20;         // backoff between reconnection attempts, doubling ...
  int reconnect_max_ms = 1000;       // ... up to this
};

class ClientImpl;

class Client final : public Store {
 public:
  // Connects and says hello. Fails (kUnavailable, kPermissionDenied, ...) when the first
  // connection cannot be made; later outages are handled as described above.
  static Result<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  ~Client() override;

  LookupResult Lookup(const Namespace& ns, std::span<const uint32_t> tokens) override;
  LookupResult LookupFrom(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) override;
  Result<ChunkWriter> BeginPut(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) override;
  Result<ChunkReader> OpenChunk(const Namespace& ns, const ChunkKey& key) override;
  void Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) override;
  // The keyed calls send the keys the caller computed (docs/DAEMON.md, keyed requests), so
  // the daemon hashes none of the stream; a put still sends the chunk's tokens and the daemon
  // keys that one chunk itself (no key is taken on trust for a put), but this process does
  // not hash it again. Against a daemon that predates keyed requests they fall back to the
  // token messages.
  LookupResult LookupKeyed(const Namespace& ns, const KeyedTokens& prompt) override;
  void HintKeyed(const Namespace& ns, const std::vector<const KeyedTokens*>& prompts) override;
  Result<ChunkWriter> BeginPutKeyed(const Namespace& ns, const ChunkSpan& chunk,
                                    std::span<const uint32_t> chunk_tokens) override;
  Status Flush() override;
  void WaitForPrefetch() override;
  // The daemon's totals for a client that may see them (no tokens configured); for a
  // tenant-bound client, this client's own lookup and byte counters.
  StoreStats Stats() const override;

  bool connected() const;
  bool shared_memory() const;  // the current connection maps T1
  uint64_t reconnects() const;  // successful connections after the first

 private:
  explicit Client(std::unique_ptr<ClientImpl> impl);
  std::unique_ptr<ClientImpl> impl_;
};

}  // namespace kvault
