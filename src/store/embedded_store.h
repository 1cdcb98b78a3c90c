// EmbeddedStore: the Store that runs in the calling process (T1 in its memory, T2 on its disk).
// Store::Open returns one; kvaultd holds one and serves it to its clients.
#pragma once

#include <memory>
#include <optional>

#include "kvault/store.h"
#include "store/store_impl.h"

namespace kvault {

class EmbeddedStore final : public Store {
 public:
  explicit EmbeddedStore(std::unique_ptr<StoreImpl> impl) : impl_(std::move(impl)) {}
  ~EmbeddedStore() override = default;

  // The token methods key the stream once and call the keyed ones.
  LookupResult Lookup(const Namespace& ns, std::span<const uint32_t> tokens) override {
    return impl_->Lookup(ns, KeyTokens(ns, tokens));
  }
  LookupResult LookupFrom(const Namespace& ns, const ChunkKey& parent, std::span<const uint32_t> tokens) override {
    return impl_->Lookup(ns, KeyTokensFrom(ns, parent, tokens));
  }
  LookupResult LookupKeyed(const Namespace& ns, const KeyedTokens& prompt) override { return impl_->Lookup(ns, prompt); }
  Result<ChunkWriter> BeginPut(const Namespace& ns, const ChunkKey& parent,
                               std::span<const uint32_t> tokens) override {
    ChunkSpan chunk{ChainKey(ns, parent, tokens), parent, 0, static_cast<uint32_t>(tokens.size())};
    return impl_->BeginPut(ns, chunk, tokens);
  }
  Result<ChunkWriter> BeginPutKeyed(const Namespace& ns, const ChunkSpan& chunk,
                                    std::span<const uint32_t> chunk_tokens) override {
    return impl_->BeginPut(ns, chunk, chunk_tokens);
  }
  Result<ChunkReader> OpenChunk(const Namespace& ns, const ChunkKey& key) override {
    return impl_->OpenChunk(ns, key);
  }
  void Hint(const Namespace& ns, const std::vector<std::span<const uint32_t>>& prompts) override {
    std::vector<KeyedTokens> keyed;
    keyed.reserve(prompts.size());
    for (std::span<const uint32_t> p : prompts) keyed.push_back(KeyTokens(ns, p));
    std::vector<const KeyedTokens*> window;
    window.reserve(keyed.size());
    for (const KeyedTokens& k : keyed) window.push_back(&k);
    impl_->Hint(ns, window);
  }
  void HintKeyed(const Namespace& ns, const std::vector<const KeyedTokens*>& prompts) override {
    impl_->Hint(ns, prompts);
  }
  // A window merged from several clients' (kvaultd), prompts of any namespaces.
  void Hint(std::span<const HintPrompt> prompts) { impl_->Hint(prompts); }
  Status Flush() override { return impl_->Flush(); }
  void WaitForPrefetch() override { impl_->WaitForPrefetch(); }
  StoreStats Stats() const override { return impl_->Stats(); }
  std::vector<std::span<std::byte>> HostMemory() const override {
    return {{impl_->arena().base(), impl_->arena().map_bytes()}};
  }

  // The cluster tier's (T3) own counters (kvaultd reports them); nullopt when T3 is off.
  std::optional<RemoteTierStats> ClusterStats() const { return impl_->ClusterStats(); }
  // Returns when every chunk queued for T3 so far has been published or dropped.
  void WaitForClusterWrites() { impl_->WaitForClusterWrites(); }

  // T1's memory: with StoreOptions::shared_t1 its memfd (fd() >= 0) can be mapped by other
  // processes; pieces handed out by readers and writers lie inside [base(), base() + map_bytes()).
  const HostArena& arena() const { return impl_->arena(); }

 private:
  std::unique_ptr<StoreImpl> impl_;
};

}  // namespace kvault
