// kvault::Store and its handles: range checks, then the backend (the embedded store's or a client's).
#include "kvault/store.h"

#include <nlohmann/json.hpp>

#include "store/embedded_store.h"

namespace kvault {

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kNone: return "none";
    case Tier::kT1: return "t1";
    case Tier::kT2: return "t2";
    case Tier::kT3: return "t3";
  }
  return "unknown";
}

// --- ChunkWriter -------------------------------------------------------------------------

ChunkWriter::ChunkWriter(ChunkKey key, uint32_t tokens, const KvLayout& layout, bool exists,
                         std::unique_ptr<ChunkWriterBackend> backend)
    : key_(key), tokens_(tokens), layout_(layout), bytes_(layout.chunk_bytes(tokens)), exists_(exists),
      backend_(std::move(backend)) {}

Status ChunkWriter::CheckRange(size_t offset, size_t size) const {
  if (backend_ == nullptr) return Status::InvalidArgument("writer already committed");
  if (offset > bytes_ || size > bytes_ - offset) return Status::InvalidArgument("range outside the chunk");
  return Status::OK();
}

Status ChunkWriter::WriteLayer(uint32_t layer, std::span<const std::byte> kv) {
  if (exists_) return Status::OK();
  if (layer >= layout_.num_layers) return Status::InvalidArgument("layer out of range");
  ByteRange r = layout_.layer_range(layer, tokens_);
  if (kv.size() != r.size) return Status::InvalidArgument("layer data has the wrong size");
  return WriteRange(r.offset, kv);
}

Status ChunkWriter::WriteRange(size_t offset, std::span<const std::byte> data) {
  if (exists_) return Status::OK();
  KVAULT_RETURN_IF_ERROR(CheckRange(offset, data.size()));
  backend_->Write(offset, data);
  return Status::OK();
}

Status ChunkWriter::ForEachPiece(size_t offset, size_t size, const std::function<void(std::span<std::byte>)>& fn) {
  if (exists_) return Status::OK();
  KVAULT_RETURN_IF_ERROR(CheckRange(offset, size));
  backend_->ForEachPiece(offset, size, fn);
  return Status::OK();
}

Status ChunkWriter::MarkWritten(size_t offset, size_t size) {
  if (exists_) return Status::OK();
  KVAULT_RETURN_IF_ERROR(CheckRange(offset, size));
  backend_->MarkWritten(offset, size);
  return Status::OK();
}

Status ChunkWriter::Commit() {
  if (exists_) return Status::OK();
  if (backend_ == nullptr) return Status::InvalidArgument("writer already committed");
  Status st = backend_->Commit();
  backend_.reset();
  return st;
}

// --- ChunkReader -------------------------------------------------------------------------

ChunkReader::ChunkReader(ChunkKey key, uint32_t tokens, const KvLayout& layout, Tier served_from,
                         std::unique_ptr<ChunkReaderBackend> backend)
    : key_(key), tokens_(tokens), layout_(layout), bytes_(layout.chunk_bytes(tokens)), served_from_(served_from),
      backend_(std::move(backend)) {}

Status ChunkReader::ReadLayer(uint32_t layer, std::span<std::byte> dst) const {
  if (layer >= layout_.num_layers) return Status::InvalidArgument("layer out of range");
  ByteRange r = layout_.layer_range(layer, tokens_);
  if (dst.size() != r.size) return Status::InvalidArgument("destination has the wrong size for a layer");
  return ReadRange(r.offset, dst);
}

Status ChunkReader::ReadRange(size_t offset, std::span<std::byte> dst) const {
  if (backend_ == nullptr) return Status::InvalidArgument("empty reader");
  if (offset > bytes_ || dst.size() > bytes_ - offset) return Status::InvalidArgument("range outside the chunk");
  backend_->Read(offset, dst);
  return Status::OK();
}

Status ChunkReader::ForEachPiece(size_t offset, size_t size,
                                 const std::function<void(std::span<const std::byte>)>& fn) const {
  if (backend_ == nullptr) return Status::InvalidArgument("empty reader");
  if (offset > bytes_ || size > bytes_ - offset) return Status::InvalidArgument("range outside the chunk");
  backend_->ForEachPiece(offset, size, fn);
  return Status::OK();
}

// --- Store -------------------------------------------------------------------------------

Result<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  auto impl = StoreImpl::Open(options);
  if (!impl.ok()) return impl.status();
  return std::unique_ptr<Store>(new EmbeddedStore(std::move(impl.value())));
}

LookupResult Store::LookupKeyed(const Namespace& ns, const KeyedTokens& prompt) {
  if (prompt.first_parent == ns.id()) return Lookup(ns, prompt.tokens);
  return LookupFrom(ns, prompt.first_parent, prompt.tokens);
}

Result<ChunkWriter> Store::BeginPutKeyed(const Namespace& ns, const ChunkSpan& chunk,
                                         std::span<const uint32_t> chunk_tokens) {
  if (chunk.tokens != chunk_tokens.size()) return Status::InvalidArgument("chunk span and tokens differ in length");
  return BeginPut(ns, chunk.parent, chunk_tokens);
}

void Store::HintKeyed(const Namespace& ns, const std::vector<const KeyedTokens*>& prompts) {
  std::vector<std::span<const uint32_t>> spans;
  spans.reserve(prompts.size());
  for (const KeyedTokens* p : prompts) spans.push_back(p->tokens);
  Hint(ns, spans);
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

// Every counter of StoreStats, for the JSON encoders (t2_direct_io, a bool, is handled apart).
#define KVAULT_STORE_STATS_COUNTERS(X) \
  X(lookups) X(lookup_tokens) X(lookup_chunks) X(hit_tokens_t1) X(hit_chunks_t1) X(hit_tokens_t2) \
  X(hit_chunks_t2) X(hit_tokens_t3) X(hit_chunks_t3) X(miss_tokens) X(miss_chunks) X(bytes_put) \
  X(bytes_loaded) X(bytes_t1_to_t2) X(bytes_t2_to_t1) X(bytes_t1_to_t3) X(bytes_t3_to_t1) X(puts) \
  X(puts_deduplicated) X(t1_evictions) X(t1_dropped_unpersisted) X(t2_evictions) X(t2_compactions) \
  X(bytes_compacted) X(t2_rewrites) X(promotions) X(hints) X(prefetches) X(bytes_prefetched) \
  X(partials_superseded) X(t3_puts) X(t3_put_drops) X(t3_fetches) X(t1_used_bytes) X(t1_capacity_bytes) \
  X(t1_entries) X(t2_used_bytes) X(t2_capacity_bytes) X(t2_entries) X(t2_segments) X(write_queue_entries) \
  X(t3_queue_entries) X(t3_queue_bytes) X(err_io) X(err_no_space) X(err_corruption) X(err_torn) \
  X(err_load_miss) X(err_t3) X(t2_chunks_encoded) X(t2_chunks_decoded) X(t3_chunks_encoded) X(t3_chunks_decoded) \
  X(codec_fallbacks)

std::string StoreStats::ToJson() const {
  nlohmann::ordered_json j;
#define KV(name) j[#name] = name;
  KVAULT_STORE_STATS_COUNTERS(KV)
#undef KV
  j["t2_direct_io"] = t2_direct_io;
  return j.dump();
}

Status StoreStats::FromJson(const std::string& text, StoreStats* out) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Status::InvalidArgument("store stats: not a JSON object");
  StoreStats s;
#define KV(name) \
  if (auto it = j.find(#name); it != j.end() && it->is_number_unsigned()) s.name = it->get<uint64_t>();
  KVAULT_STORE_STATS_COUNTERS(KV)
#undef KV
  if (auto it = j.find("t2_direct_io"); it != j.end() && it->is_boolean()) s.t2_direct_io = it->get<bool>();
  *out = s;
  return Status::OK();
}

}  // namespace kvault
