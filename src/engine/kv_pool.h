// KvPool: the engine's paged KV memory (T0). Per layer, K and V are one tensor each of
// [num_pages, page_tokens, kv_heads, head_dim]; a page holds one store chunk (page_tokens ==
// chunk_tokens), so a chunk's layer range maps onto one page of K and one of V, and loads
// and saves copy straight between store memory and pages. K is kept before RoPE.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "engine/model.h"
#include "engine/model_config.h"

namespace kvault::engine {

class KvPool {
 public:
  KvPool(const ModelConfig& config, torch::ScalarType dtype, torch::Device device, int64_t page_tokens,
         int64_t num_pages);

  int64_t page_tokens() const { return page_tokens_; }
  int64_t num_pages() const { return num_pages_; }
  int64_t num_layers() const { return static_cast<int64_t>(k_.size()); }
  // Bytes of one token's K (or V) in one layer.
  size_t token_bytes() const { return token_bytes_; }
  // Start of page `page`'s K (or V) in layer `layer` (contiguous page_tokens tokens).
  std::byte* KPage(int64_t layer, int32_t page) const;
  std::byte* VPage(int64_t layer, int32_t page) const;
  const torch::Tensor& k(int64_t layer) const { return k_[layer]; }
  const torch::Tensor& v(int64_t layer) const { return v_[layer]; }

  // Thread-safe page allocation.
  std::optional<std::vector<int32_t>> Allocate(int64_t pages);
  void Free(const std::vector<int32_t>& pages);
  int64_t free_pages() const;

 private:
  int64_t page_tokens_, num_pages_;
  size_t token_bytes_;
  std::vector<torch::Tensor> k_, v_;
  mutable std::mutex mu_;
  std::vector<int32_t> free_;  // GUARDED_BY(mu_)
};

// Pages leased from a pool, returned when the last holder (the sequence, pending saves)
// lets go.
class PageLease {
 public:
  PageLease(KvPool* pool, std::vector<int32_t> pages) : pool_(pool), pages_(std::move(pages)) {}
  ~PageLease() { pool_->Free(pages_); }
  PageLease(const PageLease&) = delete;
  PageLease& operator=(const PageLease&) = delete;
  const std::vector<int32_t>& pages() const { return pages_; }
  KvPool* pool() const { return pool_; }

 private:
  KvPool* pool_;
  std::vector<int32_t> pages_;
};

// One sequence's view of the pool: position p lives in page pages[p / page_tokens].
// Hooks run before a layer computes (wait for loaded KV) and after its new KV is appended
// (let the saver copy it).
class SequenceKv final : public KvAccess {
 public:
  explicit SequenceKv(std::shared_ptr<PageLease> lease) : lease_(std::move(lease)) {}
  void Append(int64_t layer, int64_t start, const torch::Tensor& k, const torch::Tensor& v) override;
  std::pair<torch::Tensor, torch::Tensor> Gather(int64_t layer, int64_t end) override;
  // Views of the pages themselves (runs of adjacent pages as one piece): no copy.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> Blocks(int64_t layer, int64_t end) override;
  void BeforeLayer(int64_t layer) override {
    if (before_) before_(layer);
  }
  void AfterLayer(int64_t layer) override {
    if (after_) after_(layer);
  }
  void SetHooks(std::function<void(int64_t)> before, std::function<void(int64_t)> after) {
    before_ = std::move(before);
    after_ = std::move(after);
  }
  const std::shared_ptr<PageLease>& lease() const { return lease_; }
  int64_t capacity() const;

 private:
  std::shared_ptr<PageLease> lease_;
  std::function<void(int64_t)> before_, after_;
};

}  // namespace kvault::engine
