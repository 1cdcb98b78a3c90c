// kvault::Store and its handles: thin forwarding to StoreImpl.
#include "kvault/store.h"

#include <nlohmann/json.hpp>

#include "store/store_impl.h"

namespace kvault {

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kNone: return "none";
    case Tier::kHost: return "t1";
    case Tier::kDisk: return "t2";
  }
  return "unknown";
}

// --- ChunkWriter -------------------------------------------------------------------------

ChunkWriter::ChunkWriter(StoreImpl* impl, Entry* entry, ChunkKey key, uint32_t tokens, bool exists,
                         std::vector<ChunkKey> superseded)
    : impl_(impl), entry_(entry), key_(key), tokens_(tokens), exists_(exists), superseded_(std::move(superseded)) {}

ChunkWriter::ChunkWriter(ChunkWriter&& o) noexcept { *this = std::move(o); }

ChunkWriter& ChunkWriter::operator=(ChunkWriter&& o) noexcept {
  if (this != &o) {
    if (impl_ && entry_) impl_->Abort(entry_);
    impl_ = std::exchange(o.impl_, nullptr);
    entry_ = std::exchange(o.entry_, nullptr);
    key_ = o.key_;
    tokens_ = o.tokens_;
    exists_ = o.exists_;
    superseded_ = std::move(o.superseded_);
  }
  return *this;
}

ChunkWriter::~ChunkWriter() {
  if (impl_ && entry_) impl_->Abort(entry_);
}

const ChunkKey& ChunkWriter::key() const { return key_; }
uint32_t ChunkWriter::tokens() const { return tokens_; }

Status ChunkWriter::WriteLayer(uint32_t layer, std::span<const std::byte> kv) {
  if (exists_) return Status::OK();
  if (entry_ == nullptr) return Status::InvalidArgument("writer already committed");
  if (layer >= entry_->layout.num_layers) return Status::InvalidArgument("layer out of range");
  ByteRange r = entry_->layout.layer_range(layer, tokens_);
  if (kv.size() != r.size) return Status::InvalidArgument("layer data has the wrong size");
  impl_->CopyIn(entry_, r.offset, kv);
  return Status::OK();
}

Status ChunkWriter::WriteRange(size_t offset, std::span<const std::byte> data) {
  if (exists_) return Status::OK();
  if (entry_ == nullptr) return Status::InvalidArgument("writer already committed");
  if (offset > entry_->bytes || data.size() > entry_->bytes - offset) return Status::InvalidArgument("range outside the chunk");
  impl_->CopyIn(entry_, offset, data);
  return Status::OK();
}

Status ChunkWriter::Commit() {
  if (exists_) return Status::OK();
  if (entry_ == nullptr) return Status::InvalidArgument("writer already committed");
  return impl_->Commit(std::exchange(entry_, nullptr), superseded_);
}

// --- ChunkReader -------------------------------------------------------------------------

ChunkReader::ChunkReader(StoreImpl* impl, Entry* entry, Tier from) : impl_(impl), entry_(entry), served_from_(from) {}

ChunkReader::ChunkReader(ChunkReader&& o) noexcept { *this = std::move(o); }

ChunkReader& ChunkReader::operator=(ChunkReader&& o) noexcept {
  if (this != &o) {
    if (impl_ && entry_) impl_->Unpin(entry_);
    impl_ = std::exchange(o.impl_, nullptr);
    entry_ = std::exchange(o.entry_, nullptr);
    served_from_ = o.served_from_;
  }
  return *this;
}

ChunkReader::~ChunkReader() {
  if (impl_ && entry_) impl_->Unpin(entry_);
}

const ChunkKey& ChunkReader::key() const { return entry_->key; }
uint32_t ChunkReader::tokens() const { return entry_->tokens; }
size_t ChunkReader::size() const { return entry_->bytes; }

Status ChunkReader::ReadLayer(uint32_t layer, std::span<std::byte> dst) const {
  if (layer >= entry_->layout.num_layers) return Status::InvalidArgument("layer out of range");
  ByteRange r = entry_->layout.layer_range(layer, entry_->tokens);
  if (dst.size() != r.size) return Status::InvalidArgument("destination has the wrong size for a layer");
  impl_->CopyOut(entry_, r.offset, dst);
  return Status::OK();
}

Status ChunkReader::ReadRange(size_t offset, std::span<std::byte> dst) const {
  if (offset > entry_->bytes || dst.size() > entry_->bytes - offset) return Status::InvalidArgument("range outside the chunk");
  impl_->CopyOut(entry_, offset, dst);
  return Status::OK();
}

Status ChunkReader::ForEachPiece(size_t offset, size_t size,
                                 const std::function<void(std::span<const std::byte>)>& fn) const {
  if (offset > entry_->bytes || size > entry_->bytes - offset) return Status::InvalidArgument("range outside the chunk");
  impl_->ForEachPiece(entry_, offset, size, fn);
  return Status::OK();
}

// --- Store -------------------------------------------------------------------------------

Store::Store(std::unique_ptr<StoreImpl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;

Result<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  auto impl = StoreImpl::Open(options);
  if (!impl.ok()) return impl.status();
  return std::unique_ptr<Store>(new Store(std::move(impl.value())));
}

LookupResult Store::Lookup(const Namespace& ns, std::span<const uint32_t> tokens) {
  return impl_->Lookup(ns, ns.id(), tokens);
}
LookupResult Store::LookupFrom(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) {
  return impl_->Lookup(ns, parent, tokens);
}

Result<ChunkWriter> Store::BeginPut(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) {
  return impl_->BeginPut(ns, parent, tokens);
}

Status Store::Put(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens,
                  std::span<const std::byte> payload) {
  if (payload.size() != ns.layout().chunk_bytes(static_cast<uint32_t>(tokens.size()))) {
    return Status::InvalidArgument("payload size does not match the layout and token count");
  }
  auto w = BeginPut(ns, parent, tokens);
  if (!w.ok()) return w.status();
  KVAULT_RETURN_IF_ERROR(w->WriteRange(0, payload));
  return w->Commit();
}

Result<ChunkReader> Store::OpenChunk(const Namespace& ns, const ChunkKey& key) { return impl_->OpenChunk(ns, key); }
Status Store::Flush() { return impl_->Flush(); }
void Store::Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) { impl_->Hint(ns, prompts); }
void Store::WaitForPrefetch() { impl_->WaitForPrefetch(); }
StoreStats Store::Stats() const { return impl_->Stats(); }

std::string StoreStats::ToJson() const {
  nlohmann::ordered_json j;
#define KV(name) j[#name] = name;
  KV(lookups) KV(lookup_tokens) KV(lookup_chunks) KV(hit_tokens_t1) KV(hit_chunks_t1) KV(hit_tokens_t2)
  KV(hit_chunks_t2) KV(miss_tokens) KV(miss_chunks) KV(bytes_put) KV(bytes_loaded) KV(bytes_t1_to_t2)
  KV(bytes_t2_to_t1) KV(puts) KV(puts_deduplicated) KV(t1_evictions) KV(t1_dropped_unpersisted)
  KV(t2_evictions) KV(t2_compactions) KV(bytes_compacted) KV(t2_rewrites) KV(promotions) KV(hints) KV(prefetches) KV(bytes_prefetched) KV(partials_superseded) KV(t1_used_bytes)
  KV(t1_capacity_bytes) KV(t1_entries) KV(t2_used_bytes) KV(t2_capacity_bytes) KV(t2_entries)
  KV(t2_segments) KV(write_queue_entries) KV(err_io) KV(err_no_space) KV(err_corruption) KV(err_torn)
  KV(err_load_miss) KV(t2_direct_io)
#undef KV
  return j.dump();
}

}  // namespace kvault
