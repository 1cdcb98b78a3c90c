// What kvaultd does for each request: one generic path (decode, resolve the namespace, run,
// reply, time) and a handler per request with only its own logic. daemon_impl.h has the
// thread-safety rules.
#include <openssl/crypto.h>

#include <algorithm>
#include <chrono>
#include <type_traits>

#include "daemon/daemon_impl.h"

namespace kvault {

using wire::MsgType;

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The whole chunks of a keyed stream, from the keys the client computed: chunk i covers
// tokens [i * chunk_tokens, (i + 1) * chunk_tokens) and follows chunk i - 1 (the first follows
// first_parent). The daemon trusts the keys only within the request's namespace: the store
// matches an entry only when its namespace is the request's, so a key of another namespace
// is a miss.
std::vector<ChunkSpan> SpansOfKeys(std::span<const ChunkKey> keys, const ChunkKey& first_parent, uint32_t chunk_tokens) {
  std::vector<ChunkSpan> spans(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    spans[i] = {keys[i], i == 0 ? first_parent : keys[i - 1], static_cast<uint32_t>(i * chunk_tokens), chunk_tokens};
  }
  return spans;
}

// A handle's chunk as (offset, length) pieces of the shared T1 mapping that starts at `base`.
template <class Handle>
std::vector<wire::Piece> ArenaPieces(Handle& h, const std::byte* base) {
  std::vector<wire::Piece> pieces;
  (void)h.ForEachPiece(0, h.size(), [&](auto p) { pieces.push_back({static_cast<uint64_t>(p.data() - base), p.size()}); });
  return pieces;
}

}  // namespace

Status Daemon::Impl::Dispatch(Connection* c, MsgType type, std::span<const std::byte> payload) {
  switch (type) {
    case MsgType::kHello:
      return OnHello(c, payload);
    case MsgType::kLookup:
      return Handle(c, payload, MsgType::kLookupReply, &lookup_seconds_, &Impl::Lookup);
    case MsgType::kBeginPut:
      return Handle(c, payload, MsgType::kBeginPutReply, &begin_put_seconds_, &Impl::BeginPut);
    case MsgType::kCommitPut:
      return Handle(c, payload, MsgType::kCommitPutReply, &commit_seconds_, &Impl::CommitPut);
    case MsgType::kAbortPut:
      return Handle(c, payload, MsgType::kAbortPut, nullptr, &Impl::AbortPut);
    case MsgType::kOpen:
      return Handle(c, payload, MsgType::kOpenReply, &open_seconds_, &Impl::Open);
    case MsgType::kRelease:
      return Handle(c, payload, MsgType::kRelease, nullptr, &Impl::Release);
    case MsgType::kHint:
      return Handle(c, payload, MsgType::kHint, nullptr, &Impl::Hint);
    case MsgType::kLookupKeyed:
      return Handle(c, payload, MsgType::kLookupReply, &lookup_seconds_, &Impl::LookupKeyed);
    case MsgType::kHintKeyed:
      return Handle(c, payload, MsgType::kHintKeyed, nullptr, &Impl::HintKeyed);
    case MsgType::kFlush:
      return Handle(c, payload, MsgType::kFlushReply, nullptr, &Impl::Flush);
    case MsgType::kStats:
      return Handle(c, payload, MsgType::kStatsReply, nullptr, &Impl::Stats);
    case MsgType::kWaitPrefetch:
      return Handle(c, payload, MsgType::kWaitPrefetchReply, nullptr, &Impl::WaitPrefetch);
    default:
      return Status::InvalidArgument("unexpected message");
  }
}

Status Daemon::Impl::Refuse(Connection* c, MsgType type, std::span<const std::byte> head, const Status& why) {
  switch (type) {
    case MsgType::kLookup:
    case MsgType::kLookupKeyed: {
      wire::LookupReply r;
      r.status = why;
      return Reply(c, MsgType::kLookupReply, wire::Encode(r));
    }
    case MsgType::kBeginPut: {
      wire::BeginPutReply r;
      r.status = why;
      return Reply(c, MsgType::kBeginPutReply, wire::Encode(r));
    }
    case MsgType::kCommitPut: {
      // The client does not abort a put whose commit it sent: drop it here, as CommitPut does
      // on any error. Its handle leads the payload (CommitPutRequest).
      wire::WireReader in(head);
      const uint64_t handle = in.U64();
      if (in.ok()) c->writers.erase(handle);
      if (c->writers.empty()) c->largest_put_bytes = 0;
      return Reply(c, MsgType::kCommitPutReply, wire::Encode(wire::StatusReply{why}));
    }
    case MsgType::kHint:
    case MsgType::kHintKeyed:
      return Status::OK();  // one-way: the hint is dropped, counted as a budget refusal
    default:
      return why;  // every other request fits in a connection's own buffer: never refused
  }
}

template <typename Req, typename Rep, typename Run>
Status Daemon::Impl::HandleWith(Connection* c, std::span<const std::byte> payload, MsgType reply_type,
                                LatencyHistogram* latency, Run run) {
  const auto start = Clock::now();
  Req m;
  KVAULT_RETURN_IF_ERROR(wire::Decode(payload, &m));
  Rep r;
  run(m, r);
  Status st;
  if constexpr (!std::is_same_v<Rep, NoReply>) st = Reply(c, reply_type, wire::Encode(r));
  if (latency != nullptr) latency->Observe(SecondsSince(start));
  return st;
}

template <typename Req, typename Rep>
Status Daemon::Impl::Handle(Connection* c, std::span<const std::byte> payload, MsgType reply_type,
                            LatencyHistogram* latency, void (Impl::*handler)(Connection*, const Namespace&, Req&, Rep&)) {
  return HandleWith<Req, Rep>(c, payload, reply_type, latency, [&](Req& m, Rep& r) {
    auto ns = Resolve(c, m.ns);
    if (!ns.ok()) {
      if constexpr (!std::is_same_v<Rep, NoReply>) r.status = ns.status();
      return;  // a one-way request gets no answer; the violation is counted
    }
    (this->*handler)(c, **ns, m, r);
  });
}

template <typename Req, typename Rep>
Status Daemon::Impl::Handle(Connection* c, std::span<const std::byte> payload, MsgType reply_type,
                            LatencyHistogram* latency, void (Impl::*handler)(Connection*, Req&, Rep&)) {
  return HandleWith<Req, Rep>(c, payload, reply_type, latency, [&](Req& m, Rep& r) { (this->*handler)(c, m, r); });
}

Result<const Namespace*> Daemon::Impl::Resolve(Connection* c, const wire::WireNamespace& ns) {
  if (c->bound && ns.tenant != c->tenant) {
    ++counters_.tenant_violations;
    return Status::PermissionDenied("this connection may only use tenant '" + c->tenant + "'");
  }
  if (!c->last_wire || !(*c->last_wire == ns)) {
    c->last_ns.emplace(ns.tenant, ns.model, ns.layout);
    c->last_wire = ns;
  }
  return &*c->last_ns;
}

Status Daemon::Impl::OnHello(Connection* c, std::span<const std::byte> payload) {
  if (c->hello_done) return Status::InvalidArgument("hello sent twice");
  wire::HelloRequest m;
  KVAULT_RETURN_IF_ERROR(wire::Decode(payload, &m));
  wire::HelloReply r;
  const TenantToken* match = nullptr;
  for (const TenantToken& t : opt_.tokens) {
    if (t.token.size() == m.token.size() && !m.token.empty() &&
        CRYPTO_memcmp(t.token.data(), m.token.data(), m.token.size()) == 0) {
      match = &t;
    }
  }
  if (!opt_.tokens.empty() && match == nullptr) {
    ++counters_.auth_failures;  // before the reply: a client that sees it finds it counted
    r.status = Status::PermissionDenied("unknown token");
    (void)Reply(c, MsgType::kHelloReply, wire::Encode(r));
    return r.status;
  }
  c->bound = match != nullptr;
  c->tenant = match ? match->tenant : "";
  const long peer = c->is_unix ? wire::PeerUid(c->fd.get()) : -1;
  const bool trusted_peer = peer >= 0 && (static_cast<uid_t>(peer) == uid_ || peer == 0);
  c->shm = m.want_shm && c->is_unix && trusted_peer && (!c->bound || match->shared_memory);
  c->hello_done = true;
  r.tenant = c->tenant;
  r.bound = c->bound;
  r.shm = c->shm;
  r.arena_bytes = c->shm ? store_->arena().map_bytes() : 0;
  r.max_message_bytes = opt_.max_message_bytes;
  return Reply(c, MsgType::kHelloReply, wire::Encode(r), c->shm ? store_->arena().fd() : -1);
}

void Daemon::Impl::Lookup(Connection*, const Namespace& ns, wire::LookupRequest& m, wire::LookupReply& r) {
  // Bounded work per request: a longer lookup answers for its head (a true, shorter prefix).
  const size_t cap = wire::kMaxChunksPerRequest * size_t{m.ns.layout.chunk_tokens};
  if (m.tokens.size() > cap) m.tokens.resize(cap);
  r.result = m.has_parent ? store_->LookupFrom(ns, m.parent, m.tokens) : store_->Lookup(ns, m.tokens);
}

void Daemon::Impl::LookupKeyed(Connection*, const Namespace& ns, wire::LookupKeyedRequest& m, wire::LookupReply& r) {
  // Bounded work per request, as Lookup: the head of a longer stream (the decoder checked
  // that the keys are exactly the stream's whole chunks).
  const uint32_t chunk_tokens = m.ns.layout.chunk_tokens;
  if (m.tokens.size() > wire::kMaxChunksPerRequest * size_t{chunk_tokens}) {
    m.tokens.resize(wire::kMaxChunksPerRequest * size_t{chunk_tokens});
    m.keys.resize(wire::kMaxChunksPerRequest);
  }
  const ChunkKey first_parent = m.has_parent ? m.parent : ns.id();
  const KeyedTokens prompt{m.tokens, first_parent, SpansOfKeys(m.keys, first_parent, chunk_tokens)};
  r.result = store_->LookupKeyed(ns, prompt);
}

void Daemon::Impl::BeginPut(Connection* c, const Namespace& ns, wire::BeginPutRequest& m, wire::BeginPutReply& r) {
  if (HandlesFull(c)) {
    ++counters_.handle_errors;
    r.status = Status::ResourceExhausted("too many open handles on this connection");
    return;
  }
  auto w = store_->BeginPut(ns, m.parent, m.tokens);
  if (!w.ok()) {
    r.status = w.status();
    return;
  }
  if (w->exists()) {
    r.exists = true;
    return;
  }
  r.handle = c->next_handle++;
  if (c->shm) {
    r.pieces = ArenaPieces(*w, store_->arena().base());
  }
  c->largest_put_bytes = std::max(c->largest_put_bytes, w->size());
  c->writers.emplace(r.handle, std::move(w.value()));
}

void Daemon::Impl::CommitPut(Connection* c, wire::CommitPutRequest& m, wire::StatusReply& r) {
  auto it = c->writers.find(m.handle);
  if (it == c->writers.end()) {
    ++counters_.handle_errors;
    r.status = Status::InvalidArgument("unknown put handle");
    return;
  }
  ChunkWriter& w = it->second;
  if (c->shm) {
    if (!m.payload.empty()) r.status = Status::InvalidArgument("a shared-memory commit carries no payload");
    // Ranges must come sorted and apart (the client merges them): each is then appended to
    // the writer's range list in constant time, whatever the client sends.
    for (size_t i = 1; i < m.written.size() && r.status.ok(); ++i) {
      if (m.written[i].offset <= m.written[i - 1].offset + m.written[i - 1].size) {
        r.status = Status::InvalidArgument("written ranges must be sorted and disjoint");
      }
    }
    for (const wire::Piece& p : m.written) {
      if (r.status.ok()) r.status = w.MarkWritten(p.offset, p.size);
    }
  } else if (m.payload.size() != w.size() || !m.written.empty()) {
    r.status = Status::InvalidArgument("an inline commit carries the whole payload");
  } else {
    r.status = w.WriteRange(0, m.payload);
  }
  if (r.status.ok()) r.status = w.Commit();
  c->writers.erase(it);  // committed, or dropped on any error
  if (c->writers.empty()) c->largest_put_bytes = 0;
}

void Daemon::Impl::AbortPut(Connection* c, wire::HandleRequest& m, NoReply&) {
  if (c->writers.erase(m.handle) == 0) ++counters_.handle_errors;  // one-way: nothing to answer
  if (c->writers.empty()) c->largest_put_bytes = 0;
}

void Daemon::Impl::Release(Connection* c, wire::HandleRequest& m, NoReply&) {
  if (c->readers.erase(m.handle) == 0) ++counters_.handle_errors;  // one-way: nothing to answer
}

void Daemon::Impl::Open(Connection* c, const Namespace& ns, wire::OpenRequest& m, wire::OpenReply& r) {
  if (HandlesFull(c)) {
    ++counters_.handle_errors;
    r.status = Status::ResourceExhausted("too many open handles on this connection");
    return;
  }
  auto rd = store_->OpenChunk(ns, m.key);
  if (!rd.ok()) {
    // A tenant-bound client learns only that its chunk is not cached, never why (the reason
    // could tell it about another tenant's entry).
    r.status = c->bound && rd.status().code() == Code::kNotFound
                   ? Status::NotFound("chunk " + m.key.ShortHex() + " is not cached")
                   : rd.status();
    return;
  }
  r.tokens = rd->tokens();
  r.tier = rd->served_from();
  if (c->shm) {
    r.handle = c->next_handle++;
    r.pieces = ArenaPieces(*rd, store_->arena().base());
    c->readers.emplace(r.handle, std::move(rd.value()));
  } else if (rd->size() + 4096 > opt_.max_message_bytes) {
    r.status = Status::ResourceExhausted("chunk larger than the message limit; use shared memory");
  } else if (!c->reply_share.CoverCapacity(std::max<size_t>(rd->size(), c->reply_bytes.capacity()))) {
    // The memory of inline replies is bounded like that of requests: the open fails (the
    // client sees a miss) rather than the daemon holding more than its budget.
    ++counters_.budget_refusals;
    r.status = Status::ResourceExhausted("the daemon's message budget is in use; retry, or use shared memory");
  } else {
    if (c->reply_bytes.capacity() < rd->size()) {
      std::vector<std::byte>().swap(c->reply_bytes);
      c->reply_bytes.reserve(rd->size());  // exactly: the budget covers the capacity
    }
    c->reply_bytes.resize(rd->size());  // the reply views it until it is sent
    r.status = rd->ReadRange(0, c->reply_bytes);
    r.payload = c->reply_bytes;
  }
}

void Daemon::Impl::Hint(Connection* c, const Namespace& ns, wire::HintRequest& m, NoReply&) {
  // Bounded work and memory per hint: the window's head, up to kMaxChunksPerRequest chunks
  // and kMaxWindowTokens tokens in all.
  size_t budget = std::min(wire::kMaxChunksPerRequest * size_t{m.ns.layout.chunk_tokens}, kMaxWindowTokens);
  ClientWindow w{ns, {}, {}};
  for (auto& p : m.prompts) {
    if (budget == 0) break;
    p.resize(std::min(p.size(), budget));
    budget -= p.size();
    w.full.push_back(ChunkKeys(w.ns, p, /*include_partial=*/false));
    w.prompts.push_back(std::move(p));
  }
  SetWindow(c, std::move(w));
}

void Daemon::Impl::HintKeyed(Connection* c, const Namespace& ns, wire::HintKeyedRequest& m, NoReply&) {
  // The same bounds as Hint; a prompt cut short keeps the keys of its remaining whole chunks.
  const uint32_t chunk_tokens = m.ns.layout.chunk_tokens;
  size_t budget = std::min(wire::kMaxChunksPerRequest * size_t{chunk_tokens}, kMaxWindowTokens);
  ClientWindow w{ns, {}, {}};
  for (auto& p : m.prompts) {
    if (budget == 0) break;
    p.tokens.resize(std::min(p.tokens.size(), budget));
    p.keys.resize(p.tokens.size() / chunk_tokens);
    budget -= p.tokens.size();
    w.full.push_back(SpansOfKeys(p.keys, ns.id(), chunk_tokens));
    w.prompts.push_back(std::move(p.tokens));
  }
  SetWindow(c, std::move(w));
}

void Daemon::Impl::Flush(Connection*, EmptyRequest&, wire::StatusReply& r) { r.status = store_->Flush(); }

void Daemon::Impl::Stats(Connection* c, EmptyRequest&, wire::StatsReply& r) {
  // The node's totals describe every tenant's entries: bound clients get none.
  r.json = c->bound ? std::string("{}") : store_->Stats().ToJson();
}

void Daemon::Impl::WaitPrefetch(Connection*, EmptyRequest&, wire::StatusReply&) { store_->WaitForPrefetch(); }

void Daemon::Impl::SetWindow(const Connection* c, std::optional<ClientWindow> w) {
  MutexLock lock(windows_mu_);
  if (w) {
    windows_.insert_or_assign(c, std::move(*w));
  } else if (windows_.erase(c) == 0) {
    return;  // it never hinted: nothing changes
  }
  std::vector<HintPrompt> merged;
  size_t chunks = 0;
  for (size_t depth = 0;; ++depth) {
    bool any = false;
    for (const auto& [conn, cw] : windows_) {
      if (depth >= cw.prompts.size()) continue;
      any = true;
      chunks += cw.full[depth].size();
      if (chunks > 4 * wire::kMaxChunksPerRequest) break;  // the merged window's cap
      merged.push_back({&cw.ns, cw.prompts[depth], &cw.full[depth]});
    }
    if (!any || chunks > 4 * wire::kMaxChunksPerRequest) break;
  }
  store_->Hint(merged);
}

}  // namespace kvault
