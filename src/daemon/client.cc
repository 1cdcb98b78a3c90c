// kvault::Client: the connection to kvaultd (connect, hello, reconnect with backoff) and the
// Store calls as requests. client_impl.h has the locking rules.
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>

#include "daemon/client_impl.h"

namespace kvault {

using wire::MsgType;
using wire::Piece;
using wire::UniqueFd;

namespace {

using Clock = std::chrono::steady_clock;

// How long a request waits for its reply awake before it sleeps: most replies (a lookup, an
// open) come back within this.
constexpr int kReplySpinUs = 50;

}  // namespace

// --- connection ------------------------------------------------------------------------------

Result<std::shared_ptr<ClientConnection>> ClientImpl::Open(bool shared_memory, wire::HelloReply* hello) const {
  const std::string& a = opt_.address;
  Result<UniqueFd> fd = a.rfind("tcp://", 0) == 0 ? wire::ConnectTcp(a.substr(6), opt_.timeout_ms)
                                                  : wire::ConnectUnix(a.rfind("unix:", 0) == 0 ? a.substr(5) : a);
  if (!fd.ok()) return fd.status();
  wire::SetIoTimeouts(fd->get(), opt_.timeout_ms);
  KVAULT_RETURN_IF_ERROR(wire::WriteFrame(fd->get(), MsgType::kHello,
                                          wire::Encode(wire::HelloRequest{opt_.token, shared_memory})));
  wire::FrameHeader h;
  std::vector<std::byte> payload;
  UniqueFd memfd;
  KVAULT_RETURN_IF_ERROR(wire::ReadFrame(fd->get(), 1u << 20, &h, &payload, &memfd));
  if (h.type == MsgType::kError) {
    wire::StatusReply e;
    KVAULT_RETURN_IF_ERROR(wire::Decode(payload, &e));
    return e.status.ok() ? Status::Unavailable("the daemon refused the connection") : e.status;
  }
  if (h.type != MsgType::kHelloReply) return Status::InvalidArgument("unexpected reply to hello");
  wire::HelloReply& r = *hello;
  KVAULT_RETURN_IF_ERROR(wire::Decode(payload, &r));
  KVAULT_RETURN_IF_ERROR(r.status);
  auto conn = std::make_shared<ClientConnection>();
  if (r.shm) {
    if (memfd.get() < 0 || r.arena_bytes == 0) return Status::InvalidArgument("hello reply without its memory");
    void* p = mmap(nullptr, r.arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.get(), 0);
    if (p == MAP_FAILED) return Status::FromErrno(errno, "map the daemon's memory");
    conn->base = static_cast<std::byte*>(p);
    conn->size = r.arena_bytes;
  }
  conn->fd = std::move(fd.value());
  return conn;
}

Status ClientImpl::ConnectLocked() {
  wire::HelloReply r;
  auto conn = Open(opt_.shared_memory, &r);
  if (!conn.ok()) return conn.status();
  conn_ = std::move(conn.value());
  conn_->generation = ++generation_;
  bound_ = r.bound;
  if (keyed_ == KeyedSupport::kYes) keyed_ = KeyedSupport::kUnknown;  // perhaps another daemon now
  max_message_ = std::max<uint32_t>(r.max_message_bytes, 4096);
  backoff_ms_ = 0;
  return Status::OK();
}

bool ClientImpl::EnsureConnectedLocked() {
  if (conn_) return true;
  const auto now = Clock::now();
  if (now < next_attempt_) return false;
  if (ConnectLocked().ok()) return true;
  backoff_ms_ = std::clamp(backoff_ms_ * 2, opt_.reconnect_min_ms, opt_.reconnect_max_ms);
  next_attempt_ = now + std::chrono::milliseconds(backoff_ms_);
  return false;
}

void ClientImpl::DropLocked() {
  conn_.reset();  // closed when the last handle opened on it is gone
  next_attempt_ = Clock::now() + std::chrono::milliseconds(opt_.reconnect_min_ms);
  backoff_ms_ = opt_.reconnect_min_ms;
}

size_t ClientImpl::MaxTokensPerRequest(const Namespace& ns, bool with_keys) const {
  const size_t room = max_message_ - std::min<size_t>(max_message_, 4096);
  const size_t chunk_tokens = ns.layout().chunk_tokens;
  // 4 bytes a token, and with keys 32 bytes per chunk_tokens tokens.
  const size_t by_message = with_keys ? room / (4 * chunk_tokens + 32) * chunk_tokens : room / 4;
  return std::min({wire::kMaxTokensPerRequest, size_t{wire::kMaxChunksPerRequest} * ns.layout().chunk_tokens, by_message});
}

Status ClientImpl::SendLocked(MsgType type, const std::vector<std::byte>& payload) {
  if (!EnsureConnectedLocked()) return Status::Unavailable("kvaultd is not reachable at " + opt_.address);
  Status st = wire::WriteFrame(conn_->fd.get(), type, payload);
  if (!st.ok()) DropLocked();
  return st;
}

Status ClientImpl::CallLocked(MsgType type, const std::vector<std::byte>& payload, MsgType reply_type,
                              std::vector<std::byte>* reply) {
  KVAULT_RETURN_IF_ERROR(SendLocked(type, payload));
  wire::FrameHeader h;
  wire::SpinUntilReadable(conn_->fd.get(), kReplySpinUs);
  Status st = wire::ReadFrame(conn_->fd.get(), max_message_, &h, reply);
  if (st.ok() && h.type == MsgType::kError) {
    wire::StatusReply e;
    st = wire::Decode(*reply, &e);
    if (st.ok()) st = e.status.ok() ? Status::Unavailable("the daemon closed the connection") : e.status;
  } else if (st.ok() && h.type != reply_type) {
    st = Status::InvalidArgument(std::string("expected ") + wire::MsgTypeName(reply_type) + ", got " +
                                 wire::MsgTypeName(h.type));
  }
  if (!st.ok()) DropLocked();  // the stream is in an unknown state
  return st;
}

// --- operations ------------------------------------------------------------------------------

LookupResult ClientImpl::Lookup(const Namespace& ns, const ChunkKey* parent, std::span<const uint32_t> tokens) {
  MutexLock lock(mu_);
  return LookupLocked(ns, parent, tokens);
}

LookupResult ClientImpl::LookupLocked(const Namespace& ns, const ChunkKey* parent, std::span<const uint32_t> tokens) {
  wire::LookupReply r;
  std::vector<std::byte> reply;
  // A longer request than the daemon takes looks up its head: a shorter prefix, still true.
  const auto asked = tokens.first(std::min(tokens.size(), MaxTokensPerRequest(ns)));
  wire::LookupRequest m{wire::ToWire(ns), parent != nullptr, parent ? *parent : ChunkKey{},
                        std::vector<uint32_t>(asked.begin(), asked.end())};
  Status st = CallLocked(MsgType::kLookup, wire::Encode(m), MsgType::kLookupReply, &reply);
  if (st.ok()) st = wire::Decode(reply, &r);
  return FinishLookupLocked(std::move(st), r, asked.size(), tokens.size());
}

LookupResult ClientImpl::LookupKeyed(const Namespace& ns, const KeyedTokens& prompt) {
  MutexLock lock(mu_);
  const bool has_parent = prompt.first_parent != ns.id();
  const uint32_t chunk_tokens = ns.layout().chunk_tokens;
  const ChunkKey* parent = has_parent ? &prompt.first_parent : nullptr;
  if (keyed_ == KeyedSupport::kNo || !HasWholeChunkKeys(prompt, chunk_tokens)) return LookupLocked(ns, parent, prompt.tokens);
  // A daemon that predates keyed requests closes the connection on one, releasing the pins
  // and slots of the readers and writers open on it: ask only on a connection none uses.
  if (keyed_ == KeyedSupport::kUnknown && conn_ && conn_.use_count() > 1) return LookupLocked(ns, parent, prompt.tokens);
  // The head of a longer stream, with the keys of its whole chunks.
  const auto asked = prompt.tokens.first(std::min(prompt.tokens.size(), MaxTokensPerRequest(ns, /*with_keys=*/true)));
  wire::LookupKeyedRequest m{wire::ToWire(ns), has_parent, has_parent ? prompt.first_parent : ChunkKey{},
                             std::vector<uint32_t>(asked.begin(), asked.end()), {}};
  m.keys.reserve(asked.size() / chunk_tokens);
  for (size_t i = 0; i < asked.size() / chunk_tokens; ++i) m.keys.push_back(prompt.full[i].key);
  wire::LookupReply r;
  std::vector<std::byte> reply;
  Status st = CallLocked(MsgType::kLookupKeyed, wire::Encode(m), MsgType::kLookupReply, &reply);
  if (keyed_ == KeyedSupport::kUnknown && st.code() == Code::kInvalidArgument) {
    // A daemon that predates keyed requests refused the type (and closed the connection):
    // reconnect at once, without the backoff, and ask again by tokens.
    keyed_ = KeyedSupport::kNo;
    next_attempt_ = Clock::time_point{};
    backoff_ms_ = 0;
    return LookupLocked(ns, parent, prompt.tokens);
  }
  if (st.ok()) st = wire::Decode(reply, &r);
  if (st.ok()) keyed_ = KeyedSupport::kYes;
  return FinishLookupLocked(std::move(st), r, asked.size(), prompt.tokens.size());
}

LookupResult ClientImpl::FinishLookupLocked(Status st, wire::LookupReply& r, size_t asked, size_t total) {
  if (st.ok()) st = r.status;
  if (!st.ok() || r.result.cached_tokens > asked) r.result = LookupResult{};  // away or refused: a miss
  r.result.total_tokens = static_cast<uint32_t>(total);
  ++local_.lookups;
  local_.lookup_tokens += total;
  for (const CachedChunk& c : r.result.chunks) {
    if (c.tier == Tier::kT1) local_.hit_tokens_t1 += c.tokens, ++local_.hit_chunks_t1;
    if (c.tier == Tier::kT2) local_.hit_tokens_t2 += c.tokens, ++local_.hit_chunks_t2;
    if (c.tier == Tier::kT3) local_.hit_tokens_t3 += c.tokens, ++local_.hit_chunks_t3;
  }
  local_.miss_tokens += total - r.result.cached_tokens;
  return r.result;
}

Result<ChunkWriter> ClientImpl::BeginPut(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens,
                                         const ChunkKey* known_key) {
  if (tokens.empty() || tokens.size() > ns.layout().chunk_tokens) {
    return Status::InvalidArgument("a chunk holds 1..chunk_tokens tokens");
  }
  wire::BeginPutRequest m{wire::ToWire(ns), parent, std::vector<uint32_t>(tokens.begin(), tokens.end())};
  std::vector<std::byte> reply;
  MutexLock lock(mu_);
  KVAULT_RETURN_IF_ERROR(CallLocked(MsgType::kBeginPut, wire::Encode(m), MsgType::kBeginPutReply, &reply));
  wire::BeginPutReply r;
  if (Status st = wire::Decode(reply, &r, conn_->size); !st.ok()) {
    DropLocked();
    return st;
  }
  KVAULT_RETURN_IF_ERROR(r.status);
  // The daemon keys the chunk itself, from the parent and the tokens: a put never takes a
  // key on trust (its "exists" answer would tell about entries of other namespaces).
  const ChunkKey key = known_key != nullptr ? *known_key : ChainKey(ns, parent, tokens);
  const auto n = static_cast<uint32_t>(tokens.size());
  if (r.exists) return ChunkWriter(key, n, ns.layout(), /*exists=*/true, nullptr);
  const size_t bytes = ns.layout().chunk_bytes(n);
  std::unique_ptr<ChunkWriterBackend> backend;
  if (conn_->base != nullptr) {
    uint64_t total = 0;
    for (const Piece& p : r.pieces) total += p.size;
    if (total != bytes) {
      DropLocked();
      return Status::InvalidArgument("the daemon's slot has the wrong size");
    }
    backend = SharedWriter(conn_, std::move(r.pieces), r.handle);
  } else {
    if (bytes + 4096 > max_message_) {
      (void)SendLocked(MsgType::kAbortPut, wire::Encode(wire::HandleRequest{r.handle}));
      return Status::ResourceExhausted("chunk larger than the daemon's message limit; use shared memory");
    }
    backend = InlineWriter(conn_, bytes, r.handle);
  }
  return ChunkWriter(key, n, ns.layout(), /*exists=*/false, std::move(backend));
}

Status ClientImpl::Commit(uint64_t handle, const ClientConnection* conn, const std::vector<Piece>& written,
                          std::span<const std::byte> payload) {
  MutexLock lock(mu_);
  if (conn != conn_.get()) return Status::Unavailable("the connection to the daemon was lost: the put is dropped");
  if (written.size() > wire::kMaxPiecesPerMessage) return Status::ResourceExhausted("too many written ranges");
  std::vector<std::byte> reply;
  KVAULT_RETURN_IF_ERROR(CallLocked(MsgType::kCommitPut, wire::Encode(wire::CommitPutRequest{handle, written, payload}),
                                    MsgType::kCommitPutReply, &reply));
  wire::StatusReply r;
  KVAULT_RETURN_IF_ERROR(wire::Decode(reply, &r));
  if (r.status.ok()) {
    ++local_.puts;
    uint64_t bytes = payload.size();
    for (const Piece& p : written) bytes += p.size;
    local_.bytes_put += bytes;
  }
  return r.status;
}

void ClientImpl::SendHandle(MsgType type, uint64_t handle, const ClientConnection* conn) {
  MutexLock lock(mu_);
  if (conn != conn_.get()) return;  // closing that connection releases the handle
  (void)SendLocked(type, wire::Encode(wire::HandleRequest{handle}));
}

Result<ChunkReader> ClientImpl::OpenChunk(const Namespace& ns, const ChunkKey& key) {
  std::vector<std::byte> reply;
  MutexLock lock(mu_);
  Status st = CallLocked(MsgType::kOpen, wire::Encode(wire::OpenRequest{wire::ToWire(ns), key}), MsgType::kOpenReply, &reply);
  if (!st.ok()) return Status::NotFound("chunk " + key.ShortHex() + ": " + st.ToString());
  wire::OpenReply r;
  if (st = wire::Decode(reply, &r, conn_->size); !st.ok()) {
    DropLocked();
    return Status::NotFound("chunk " + key.ShortHex() + ": " + st.ToString());
  }
  KVAULT_RETURN_IF_ERROR(r.status);
  if (r.tokens == 0 || r.tokens > ns.layout().chunk_tokens || r.tier == Tier::kNone) {
    DropLocked();
    return Status::NotFound("chunk " + key.ShortHex() + ": malformed open reply");
  }
  const size_t bytes = ns.layout().chunk_bytes(r.tokens);
  std::unique_ptr<ChunkReaderBackend> backend;
  if (conn_->base != nullptr) {
    uint64_t total = 0;
    for (const Piece& p : r.pieces) total += p.size;
    if (total != bytes || !r.payload.empty()) {
      DropLocked();
      return Status::NotFound("chunk " + key.ShortHex() + ": the daemon's pieces have the wrong size");
    }
    backend = SharedReader(conn_, std::move(r.pieces), r.handle);
  } else {
    if (r.payload.size() != bytes) {
      DropLocked();
      return Status::NotFound("chunk " + key.ShortHex() + ": inline payload has the wrong size");
    }
    const size_t at = static_cast<size_t>(r.payload.data() - reply.data());
    backend = InlineReader(std::move(reply), at);  // r.payload points into it
  }
  local_.bytes_loaded += bytes;
  return ChunkReader(key, r.tokens, ns.layout(), r.tier, std::move(backend));
}

void ClientImpl::Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) {
  MutexLock lock(mu_);
  HintLocked(ns, prompts);
}

void ClientImpl::HintLocked(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) {
  ++local_.hints;
  // The window's head, within what the daemon takes; the rest of the queue is far away anyway.
  size_t budget = MaxTokensPerRequest(ns);
  wire::HintRequest m{wire::ToWire(ns), {}};
  for (const auto& p : prompts) {
    if (budget == 0 || m.prompts.size() == wire::kMaxPromptsPerHint) break;
    const size_t n = std::min(p.size(), budget);
    m.prompts.emplace_back(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(n));
    budget -= n;
  }
  (void)SendLocked(MsgType::kHint, wire::Encode(m));
}

void ClientImpl::HintKeyed(const Namespace& ns, const std::vector<const KeyedTokens*>& prompts) {
  MutexLock lock(mu_);
  const uint32_t chunk_tokens = ns.layout().chunk_tokens;
  const bool keyable = std::all_of(prompts.begin(), prompts.end(), [&](const KeyedTokens* p) {
    return p->first_parent == ns.id() && p->full.size() == p->tokens.size() / chunk_tokens;
  });
  if (keyed_ != KeyedSupport::kYes || !keyable) {
    std::vector<std::span<const uint32_t>> spans;
    for (const KeyedTokens* p : prompts) spans.push_back(p->tokens);
    HintLocked(ns, spans);
    return;
  }
  ++local_.hints;
  size_t budget = MaxTokensPerRequest(ns, /*with_keys=*/true);
  wire::HintKeyedRequest m{wire::ToWire(ns), {}};
  for (const KeyedTokens* p : prompts) {
    if (budget == 0 || m.prompts.size() == wire::kMaxPromptsPerHint) break;
    const size_t n = std::min(p->tokens.size(), budget);
    wire::KeyedPrompt& out = m.prompts.emplace_back();
    out.tokens.assign(p->tokens.begin(), p->tokens.begin() + static_cast<std::ptrdiff_t>(n));
    for (size_t i = 0; i < n / chunk_tokens; ++i) out.keys.push_back(p->full[i].key);
    budget -= n;
  }
  (void)SendLocked(MsgType::kHintKeyed, wire::Encode(m));
}

Status ClientImpl::LongCall(MsgType type, MsgType reply_type) {
  wire::HelloReply hello;
  auto conn = Open(/*shared_memory=*/false, &hello);
  if (!conn.ok()) return Status::Unavailable("kvaultd is not reachable at " + opt_.address + ": " + conn.status().ToString());
  const int fd = (*conn)->fd.get();
  wire::SetIoTimeouts(fd, 0);
  KVAULT_RETURN_IF_ERROR(wire::WriteFrame(fd, type, {}));
  wire::FrameHeader h;
  std::vector<std::byte> reply;
  KVAULT_RETURN_IF_ERROR(wire::ReadFrame(fd, 1u << 20, &h, &reply));
  wire::StatusReply r;
  KVAULT_RETURN_IF_ERROR(wire::Decode(reply, &r));
  if (h.type != reply_type) return r.status.ok() ? Status::Unavailable("the daemon closed the connection") : r.status;
  return r.status;
}

StoreStats ClientImpl::Stats() {
  std::vector<std::byte> reply;
  MutexLock lock(mu_);
  if (!bound_ && CallLocked(MsgType::kStats, {}, MsgType::kStatsReply, &reply).ok()) {
    wire::StatsReply r;
    StoreStats s;
    if (wire::Decode(reply, &r).ok() && StoreStats::FromJson(r.json, &s).ok()) return s;
  }
  return local_;
}

// --- Client ----------------------------------------------------------------------------------

Client::Client(std::unique_ptr<ClientImpl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

Result<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  auto impl = std::make_unique<ClientImpl>(options);
  {
    MutexLock lock(impl->mu_);
    KVAULT_RETURN_IF_ERROR(impl->ConnectLocked());
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

LookupResult Client::Lookup(const Namespace& ns, std::span<const uint32_t> tokens) {
  return impl_->Lookup(ns, nullptr, tokens);
}
LookupResult Client::LookupFrom(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) {
  return impl_->Lookup(ns, &parent, tokens);
}
Result<ChunkWriter> Client::BeginPut(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) {
  return impl_->BeginPut(ns, parent, tokens, nullptr);
}
LookupResult Client::LookupKeyed(const Namespace& ns, const KeyedTokens& prompt) { return impl_->LookupKeyed(ns, prompt); }
void Client::HintKeyed(const Namespace& ns, const std::vector<const KeyedTokens*>& prompts) {
  impl_->HintKeyed(ns, prompts);
}
Result<ChunkWriter> Client::BeginPutKeyed(const Namespace& ns, const ChunkSpan& chunk, std::span<const uint32_t> chunk_tokens) {
  if (chunk.tokens != chunk_tokens.size()) return Status::InvalidArgument("chunk span and tokens differ in length");
  return impl_->BeginPut(ns, chunk.parent, chunk_tokens, &chunk.key);
}
Result<ChunkReader> Client::OpenChunk(const Namespace& ns, const ChunkKey& key) { return impl_->OpenChunk(ns, key); }
void Client::Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) { impl_->Hint(ns, prompts); }
Status Client::Flush() { return impl_->LongCall(MsgType::kFlush, MsgType::kFlushReply); }
void Client::WaitForPrefetch() { (void)impl_->LongCall(MsgType::kWaitPrefetch, MsgType::kWaitPrefetchReply); }
StoreStats Client::Stats() const { return impl_->Stats(); }

bool Client::connected() const {
  MutexLock lock(impl_->mu_);
  return impl_->conn_ != nullptr;
}
bool Client::shared_memory() const {
  MutexLock lock(impl_->mu_);
  return impl_->conn_ != nullptr && impl_->conn_->base != nullptr;
}
uint64_t Client::reconnects() const {
  MutexLock lock(impl_->mu_);
  return impl_->generation_ > 0 ? impl_->generation_ - 1 : 0;
}

}  // namespace kvault
