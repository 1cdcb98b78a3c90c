// The inside of kvault::Client (client.h), shared by client.cc (the connection and the
// requests) and client_handles.cc (the chunk readers and writers it hands out).
#pragma once

#include <sys/mman.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "daemon/protocol.h"
#include "daemon/socket_io.h"
#include "kvault/client.h"
#include "store/mutex.h"

namespace kvault {

// One connection to the daemon and, with shared memory, its T1 mapped into this process.
// The handles (readers, writers) opened on a connection share it: its socket stays open, so
// the daemon keeps their pins and slots, and the mapping stays valid, until the last handle
// is gone, even after the client stopped sending requests on it (a reply timed out, the
// stream is out of step) and moved to a new connection. A pinned chunk's pages are therefore
// never handed to another chunk while a handle of this process still reads or writes them.
struct ClientConnection {
  wire::UniqueFd fd;
  std::byte* base = nullptr;  // the mapping; null without shared memory
  size_t size = 0;
  uint64_t generation = 0;
  ~ClientConnection() {
    if (base != nullptr) munmap(base, size);
  }
};

class ClientImpl {
 public:
  using MsgType = wire::MsgType;
  using Piece = wire::Piece;
  explicit ClientImpl(const ClientOptions& o) : opt_(o) {}

  // Connects and says hello (no lock needed: touches nothing shared).
  Result<std::shared_ptr<ClientConnection>> Open(bool shared_memory, wire::HelloReply* hello) const;
  // Connection state (mu_ held).
  Status ConnectLocked() REQUIRES(mu_);
  bool EnsureConnectedLocked() REQUIRES(mu_);
  void DropLocked() REQUIRES(mu_);
  Status CallLocked(MsgType type, const std::vector<std::byte>& payload, MsgType reply_type,
                    std::vector<std::byte>* reply) REQUIRES(mu_);
  Status SendLocked(MsgType type, const std::vector<std::byte>& payload) REQUIRES(mu_);

  LookupResult Lookup(const Namespace& ns, const ChunkKey* parent, std::span<const uint32_t> tokens);
  LookupResult LookupLocked(const Namespace& ns, const ChunkKey* parent, std::span<const uint32_t> tokens) REQUIRES(mu_);
  LookupResult LookupKeyed(const Namespace& ns, const KeyedTokens& prompt);
  // The lookup's result as the caller sees it (a miss when the call failed or the reply
  // claims more than was asked), counted in local_.
  LookupResult FinishLookupLocked(Status st, wire::LookupReply& r, size_t asked, size_t total) REQUIRES(mu_);
  // `key`: the chunk's key when the caller keyed it already; null: computed here.
  Result<ChunkWriter> BeginPut(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens,
                               const ChunkKey* key);
  Result<ChunkReader> OpenChunk(const Namespace& ns, const ChunkKey& key);
  void Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts);
  void HintLocked(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) REQUIRES(mu_);
  void HintKeyed(const Namespace& ns, const std::vector<const KeyedTokens*>& prompts);
  // A request whose reply may take long (Flush, WaitForPrefetch): sent on a connection of its
  // own, without a reply timeout, so other threads' requests do not wait behind it.
  Status LongCall(MsgType type, MsgType reply_type);
  StoreStats Stats();

  // For the handles: a message about `handle` of connection `conn` (not sent when the client
  // has moved on from that connection: closing it releases the handle in the daemon).
  void SendHandle(MsgType type, uint64_t handle, const ClientConnection* conn);
  Status Commit(uint64_t handle, const ClientConnection* conn, const std::vector<Piece>& written,
                std::span<const std::byte> payload);
  // What a request may carry: the daemon's message limit and its per-request caps; with_keys:
  // a keyed request, which also carries a 32-byte key per whole chunk.
  size_t MaxTokensPerRequest(const Namespace& ns, bool with_keys = false) const REQUIRES(mu_);

  // Whether the daemon takes keyed requests (kLookupKeyed, kHintKeyed). Unknown until the first
  // keyed lookup answers: one a daemon predating them refuses (kError, kInvalidArgument) is a
  // miss, and the client speaks the token messages from then on. Keyed hints (one-way: a
  // refusal would only surface on a later request) wait for kYes.
  enum class KeyedSupport { kUnknown, kYes, kNo };

  // The handles' backends (client_handles.cc): readers and writers through the mapping of
  // `conn`, or on bytes that travel inline.
  std::unique_ptr<ChunkReaderBackend> SharedReader(std::shared_ptr<ClientConnection> conn, std::vector<Piece> pieces,
                                                   uint64_t handle);
  static std::unique_ptr<ChunkReaderBackend> InlineReader(std::vector<std::byte> frame, size_t payload_at);
  std::unique_ptr<ChunkWriterBackend> SharedWriter(std::shared_ptr<ClientConnection> conn, std::vector<Piece> pieces,
                                                   uint64_t handle);
  std::unique_ptr<ChunkWriterBackend> InlineWriter(std::shared_ptr<ClientConnection> conn, size_t bytes, uint64_t handle);

  const ClientOptions opt_;
  mutable Mutex mu_;
  std::shared_ptr<ClientConnection> conn_ GUARDED_BY(mu_);  // null while disconnected
  uint64_t generation_ GUARDED_BY(mu_) = 0;  // connections made so far
  bool bound_ GUARDED_BY(mu_) = false;
  uint32_t max_message_ GUARDED_BY(mu_) = 1u << 20;
  std::chrono::steady_clock::time_point next_attempt_ GUARDED_BY(mu_){};
  int backoff_ms_ GUARDED_BY(mu_) = 0;
  StoreStats local_ GUARDED_BY(mu_);  // what this client saw
  KeyedSupport keyed_ GUARDED_BY(mu_) = KeyedSupport::kUnknown;
};

}  // namespace kvault
