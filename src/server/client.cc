#include "kvault/client.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>

#include "server/protocol.h"
#include "server/socket_io.h"
#include "store/byte_ranges.h"

namespace kvault {

using wire::MsgType;
using wire::Piece;
using wire::UniqueFd;

namespace {

using Clock = std::chrono::steady_clock;

// How long a request waits for its reply awake before it sleeps: most replies (a lookup, an
// open) come back within this.
constexpr int kReplySpinUs = 50;

// One connection to the daemon and, with shared memory, its T1 mapped into this process.
// The handles (readers, writers) opened on a connection share it: its socket stays open, so
// the daemon keeps their pins and slots, and the mapping stays valid, until the last handle
// is gone, even after the client stopped sending requests on it (a reply timed out, the
// stream is out of step) and moved to a new connection. A pinned chunk's pages are therefore
// never handed to another chunk while a handle of this process still reads or writes them.
struct Connection {
  UniqueFd fd;
  std::byte* base = nullptr;  // the mapping; null without shared memory
  size_t size = 0;
  uint64_t generation = 0;
  ~Connection() {
    if (base != nullptr) munmap(base, size);
  }
};

// Calls fn(pointer, length) for payload bytes [offset, offset + size) of a chunk stored in
// `pieces` (in payload order) inside the mapping at `base`.
template <typename Fn>
void ForPieces(std::byte* base, const std::vector<Piece>& pieces, size_t offset, size_t size, Fn&& fn) {
  size_t start = 0;
  for (const Piece& p : pieces) {
    if (size == 0) return;
    const size_t end = start + p.size;
    if (offset < end) {
      const size_t in = offset - start;
      const size_t n = std::min<size_t>(size, p.size - in);
      fn(base + p.offset + in, n);
      offset += n;
      size -= n;
    }
    start = end;
  }
}

std::vector<Piece> AsPieces(const ByteRanges& r) {
  std::vector<Piece> out;
  for (auto [lo, hi] : r.ranges()) out.push_back({lo, hi - lo});
  return out;
}

}  // namespace

class ClientImpl {
 public:
  explicit ClientImpl(const ClientOptions& o) : opt_(o) {}

  // Connects and says hello (no lock needed: touches nothing shared).
  Result<std::shared_ptr<Connection>> Open(bool shared_memory, wire::HelloReply* hello) const;
  // Connection state. All REQUIRE mu_ held.
  Status ConnectLocked();
  bool EnsureConnectedLocked();
  void DropLocked();
  Status CallLocked(MsgType type, const std::vector<std::byte>& payload, MsgType reply_type,
                    std::vector<std::byte>* reply);
  Status SendLocked(MsgType type, const std::vector<std::byte>& payload);

  LookupResult Lookup(const Namespace& ns, const ChunkKey* parent, std::span<const uint32_t> tokens);
  Result<ChunkWriter> BeginPut(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens);
  Result<ChunkReader> OpenChunk(const Namespace& ns, const ChunkKey& key);
  void Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts);
  // A request whose reply may take long (Flush, WaitForPrefetch): sent on a connection of its
  // own, without a reply timeout, so other threads' requests do not wait behind it.
  Status LongCall(MsgType type, MsgType reply_type);
  StoreStats Stats();

  // For the handles: a message about `handle` of connection `conn` (not sent when the client
  // has moved on from that connection: closing it releases the handle in the daemon).
  void SendHandle(MsgType type, uint64_t handle, const Connection* conn);
  Status Commit(uint64_t handle, const Connection* conn, const std::vector<Piece>& written,
                std::span<const std::byte> payload);
  // What a request may carry: the daemon's message limit and its per-request caps.
  size_t MaxTokensPerRequest(const Namespace& ns) const;  // REQUIRES: mu_ held

  const ClientOptions opt_;
  mutable std::mutex mu_;
  std::shared_ptr<Connection> conn_;  // GUARDED_BY(mu_); null while disconnected
  uint64_t generation_ = 0;            // GUARDED_BY(mu_); connections made so far
  bool bound_ = false;                 // GUARDED_BY(mu_)
  uint32_t max_message_ = 1u << 20;    // GUARDED_BY(mu_)
  Clock::time_point next_attempt_{};   // GUARDED_BY(mu_)
  int backoff_ms_ = 0;                 // GUARDED_BY(mu_)
  StoreStats local_;                   // GUARDED_BY(mu_): what this client saw
};

// --- handles ---------------------------------------------------------------------------------

namespace {

class SharedReader final : public ChunkReaderBackend {
 public:
  SharedReader(ClientImpl* c, std::shared_ptr<Connection> conn, std::vector<Piece> pieces, uint64_t handle)
      : c_(c), conn_(std::move(conn)), pieces_(std::move(pieces)), handle_(handle) {}
  ~SharedReader() override { c_->SendHandle(MsgType::kRelease, handle_, conn_.get()); }
  void Read(size_t offset, std::span<std::byte> dst) const override {
    std::byte* out = dst.data();
    ForPieces(conn_->base, pieces_, offset, dst.size(), [&](std::byte* p, size_t n) {
      std::memcpy(out, p, n);
      out += n;
    });
  }
  void ForEachPiece(size_t offset, size_t size, const std::function<void(std::span<const std::byte>)>& fn) const override {
    ForPieces(conn_->base, pieces_, offset, size, [&](std::byte* p, size_t n) { fn({p, n}); });
  }

 private:
  ClientImpl* c_;
  std::shared_ptr<Connection> conn_;  // keeps the pin (the socket) and the mapping
  std::vector<Piece> pieces_;
  uint64_t handle_;
};

// The payload as it arrived: the reply frame itself, kept (no copy) with the payload's place.
class InlineReader final : public ChunkReaderBackend {
 public:
  InlineReader(std::vector<std::byte> frame, size_t payload_at) : frame_(std::move(frame)), at_(payload_at) {}
  void Read(size_t offset, std::span<std::byte> dst) const override {
    std::memcpy(dst.data(), frame_.data() + at_ + offset, dst.size());
  }
  void ForEachPiece(size_t offset, size_t size, const std::function<void(std::span<const std::byte>)>& fn) const override {
    fn({frame_.data() + at_ + offset, size});
  }

 private:
  std::vector<std::byte> frame_;
  size_t at_;
};

// Writes into the daemon's T1 slot directly; Commit tells the daemon which bytes were written.
class SharedWriter final : public ChunkWriterBackend {
 public:
  SharedWriter(ClientImpl* c, std::shared_ptr<Connection> conn, std::vector<Piece> pieces, uint64_t handle)
      : c_(c), conn_(std::move(conn)), pieces_(std::move(pieces)), handle_(handle) {}
  ~SharedWriter() override {
    if (!committed_) c_->SendHandle(MsgType::kAbortPut, handle_, conn_.get());
  }
  void Write(size_t offset, std::span<const std::byte> data) override {
    const std::byte* in = data.data();
    ForPieces(conn_->base, pieces_, offset, data.size(), [&](std::byte* p, size_t n) {
      std::memcpy(p, in, n);
      in += n;
    });
    written_.Add(offset, offset + data.size());
  }
  void ForEachPiece(size_t offset, size_t size, const std::function<void(std::span<std::byte>)>& fn) override {
    ForPieces(conn_->base, pieces_, offset, size, [&](std::byte* p, size_t n) { fn({p, n}); });
  }
  void MarkWritten(size_t offset, size_t size) override { written_.Add(offset, offset + size); }
  Status Commit() override {
    committed_ = true;  // the daemon drops the slot on any failure
    return c_->Commit(handle_, conn_.get(), AsPieces(written_), {});
  }

 private:
  ClientImpl* c_;
  std::shared_ptr<Connection> conn_;  // keeps the slot (the socket) and the mapping
  std::vector<Piece> pieces_;
  uint64_t handle_;
  ByteRanges written_;
  bool committed_ = false;
};

// Buffers the payload here and sends it whole at Commit.
class InlineWriter final : public ChunkWriterBackend {
 public:
  InlineWriter(ClientImpl* c, std::shared_ptr<Connection> conn, size_t bytes, uint64_t handle)
      : c_(c), conn_(std::move(conn)), data_(bytes), handle_(handle) {}
  ~InlineWriter() override {
    if (!committed_) c_->SendHandle(MsgType::kAbortPut, handle_, conn_.get());
  }
  void Write(size_t offset, std::span<const std::byte> data) override {
    std::memcpy(data_.data() + offset, data.data(), data.size());
    written_.Add(offset, offset + data.size());
  }
  void ForEachPiece(size_t offset, size_t size, const std::function<void(std::span<std::byte>)>& fn) override {
    fn({data_.data() + offset, size});
  }
  void MarkWritten(size_t offset, size_t size) override { written_.Add(offset, offset + size); }
  Status Commit() override {
    if (!written_.Covers(data_.size())) {
      return Status::InvalidArgument("commit of a chunk whose payload was not completely written");
    }
    committed_ = true;
    return c_->Commit(handle_, conn_.get(), {}, data_);
  }

 private:
  ClientImpl* c_;
  std::shared_ptr<Connection> conn_;
  std::vector<std::byte> data_;
  uint64_t handle_;
  ByteRanges written_;
  bool committed_ = false;
};

}  // namespace

// --- connection ------------------------------------------------------------------------------

Result<std::shared_ptr<Connection>> ClientImpl::Open(bool shared_memory, wire::HelloReply* hello) const {
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
  auto conn = std::make_shared<Connection>();
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

size_t ClientImpl::MaxTokensPerRequest(const Namespace& ns) const {
  const size_t by_message = (max_message_ - std::min<size_t>(max_message_, 4096)) / 4;
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
  wire::LookupReply r;
  std::vector<std::byte> reply;
  std::lock_guard<std::mutex> lock(mu_);
  // A longer request than the daemon takes looks up its head: a shorter prefix, still true.
  const auto asked = tokens.first(std::min(tokens.size(), MaxTokensPerRequest(ns)));
  wire::LookupRequest m{wire::ToWire(ns), parent != nullptr, parent ? *parent : ChunkKey{},
                        std::vector<uint32_t>(asked.begin(), asked.end())};
  Status st = CallLocked(MsgType::kLookup, wire::Encode(m), MsgType::kLookupReply, &reply);
  if (st.ok()) st = wire::Decode(reply, &r);
  if (st.ok()) st = r.status;
  if (!st.ok() || r.result.cached_tokens > asked.size()) r.result = LookupResult{};  // away or refused: a miss
  r.result.total_tokens = static_cast<uint32_t>(tokens.size());
  ++local_.lookups;
  local_.lookup_tokens += tokens.size();
  for (const CachedChunk& c : r.result.chunks) {
    if (c.tier == Tier::kHost) local_.hit_tokens_t1 += c.tokens, ++local_.hit_chunks_t1;
    if (c.tier == Tier::kDisk) local_.hit_tokens_t2 += c.tokens, ++local_.hit_chunks_t2;
    if (c.tier == Tier::kCluster) local_.hit_tokens_t3 += c.tokens, ++local_.hit_chunks_t3;
  }
  local_.miss_tokens += tokens.size() - r.result.cached_tokens;
  return r.result;
}

Result<ChunkWriter> ClientImpl::BeginPut(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) {
  if (tokens.empty() || tokens.size() > ns.layout().chunk_tokens) {
    return Status::InvalidArgument("a chunk holds 1..chunk_tokens tokens");
  }
  wire::BeginPutRequest m{wire::ToWire(ns), parent, std::vector<uint32_t>(tokens.begin(), tokens.end())};
  std::vector<std::byte> reply;
  std::unique_lock<std::mutex> lock(mu_);
  KVAULT_RETURN_IF_ERROR(CallLocked(MsgType::kBeginPut, wire::Encode(m), MsgType::kBeginPutReply, &reply));
  wire::BeginPutReply r;
  if (Status st = wire::Decode(reply, &r, conn_->size); !st.ok()) {
    DropLocked();
    return st;
  }
  KVAULT_RETURN_IF_ERROR(r.status);
  const ChunkKey key = ChainKey(ns, parent, tokens);
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
    backend = std::make_unique<SharedWriter>(this, conn_, std::move(r.pieces), r.handle);
  } else {
    if (bytes + 4096 > max_message_) {
      (void)SendLocked(MsgType::kAbortPut, wire::Encode(wire::HandleRequest{r.handle}));
      return Status::ResourceExhausted("chunk larger than the daemon's message limit; use shared memory");
    }
    backend = std::make_unique<InlineWriter>(this, conn_, bytes, r.handle);
  }
  return ChunkWriter(key, n, ns.layout(), /*exists=*/false, std::move(backend));
}

Status ClientImpl::Commit(uint64_t handle, const Connection* conn, const std::vector<Piece>& written,
                          std::span<const std::byte> payload) {
  std::lock_guard<std::mutex> lock(mu_);
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

void ClientImpl::SendHandle(MsgType type, uint64_t handle, const Connection* conn) {
  std::lock_guard<std::mutex> lock(mu_);
  if (conn != conn_.get()) return;  // closing that connection releases the handle
  (void)SendLocked(type, wire::Encode(wire::HandleRequest{handle}));
}

Result<ChunkReader> ClientImpl::OpenChunk(const Namespace& ns, const ChunkKey& key) {
  std::vector<std::byte> reply;
  std::unique_lock<std::mutex> lock(mu_);
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
    backend = std::make_unique<SharedReader>(this, conn_, std::move(r.pieces), r.handle);
  } else {
    if (r.payload.size() != bytes) {
      DropLocked();
      return Status::NotFound("chunk " + key.ShortHex() + ": inline payload has the wrong size");
    }
    const size_t at = static_cast<size_t>(r.payload.data() - reply.data());
    backend = std::make_unique<InlineReader>(std::move(reply), at);  // r.payload points into it
  }
  local_.bytes_loaded += bytes;
  return ChunkReader(key, r.tokens, ns.layout(), r.tier, std::move(backend));
}

void ClientImpl::Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) {
  std::lock_guard<std::mutex> lock(mu_);
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
  std::lock_guard<std::mutex> lock(mu_);
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
    std::lock_guard<std::mutex> lock(impl->mu_);
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
  return impl_->BeginPut(ns, parent, tokens);
}
Result<ChunkReader> Client::OpenChunk(const Namespace& ns, const ChunkKey& key) { return impl_->OpenChunk(ns, key); }
void Client::Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) { impl_->Hint(ns, prompts); }
Status Client::Flush() { return impl_->LongCall(MsgType::kFlush, MsgType::kFlushReply); }
void Client::WaitForPrefetch() { (void)impl_->LongCall(MsgType::kWaitPrefetch, MsgType::kWaitPrefetchReply); }
StoreStats Client::Stats() const { return impl_->Stats(); }

bool Client::connected() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->conn_ != nullptr;
}
bool Client::shared_memory() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->conn_ != nullptr && impl_->conn_->base != nullptr;
}
uint64_t Client::reconnects() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->generation_ > 0 ? impl_->generation_ - 1 : 0;
}

}  // namespace kvault
