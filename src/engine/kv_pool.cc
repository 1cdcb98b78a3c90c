#include "engine/kv_pool.h"

#include <sys/mman.h>

#include <cstring>
#include <memory>
#include <new>

namespace kvault::engine {

KvPool::KvPool(const ModelConfig& config, torch::ScalarType dtype, torch::Device device, int64_t page_tokens,
               int64_t num_pages)
    : page_tokens_(page_tokens), num_pages_(num_pages) {
  auto opts = torch::TensorOptions().dtype(dtype).device(device);
  const std::vector<int64_t> shape{num_pages, page_tokens, config.num_kv_heads, config.head_dim};
  if (device.is_cpu()) {
    // One anonymous mapping: the kernel hands out zero pages on first touch, so a pool costs
    // nothing until pages are used (a server switching models builds an engine per switch-in;
    // zero-filling gigabytes up front would cost more than loading the weights).
    const size_t bytes = static_cast<size_t>(num_pages * page_tokens * config.num_kv_heads * config.head_dim) *
                         torch::elementSize(dtype);
    const size_t total = 2 * bytes * static_cast<size_t>(config.num_layers);
    void* base = total == 0 ? nullptr : ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw std::bad_alloc();
    std::shared_ptr<void> mapping(base, [total](void* p) {
      if (p != nullptr) ::munmap(p, total);
    });
    auto* at = static_cast<std::byte*>(base);
    for (int64_t l = 0; l < config.num_layers; ++l) {
      for (auto* list : {&k_, &v_}) {
        list->push_back(torch::from_blob(at, shape, [mapping](void*) {}, opts));
        at += bytes;
      }
    }
  } else {
    for (int64_t l = 0; l < config.num_layers; ++l) {
      k_.push_back(torch::zeros(shape, opts));
      v_.push_back(torch::zeros(shape, opts));
    }
  }
  token_bytes_ = static_cast<size_t>(config.num_kv_heads * config.head_dim) * torch::elementSize(dtype);
  for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
}

std::byte* KvPool::KPage(int64_t layer, int32_t page) const {
  return static_cast<std::byte*>(k_[layer].data_ptr()) + static_cast<size_t>(page) * page_tokens_ * token_bytes_;
}
std::byte* KvPool::VPage(int64_t layer, int32_t page) const {
  return static_cast<std::byte*>(v_[layer].data_ptr()) + static_cast<size_t>(page) * page_tokens_ * token_bytes_;
}

std::optional<std::vector<int32_t>> KvPool::Allocate(int64_t pages) {
  std::lock_guard<std::mutex> lock(mu_);
  if (pages > static_cast<int64_t>(free_.size())) return std::nullopt;
  std::vector<int32_t> out(free_.end() - pages, free_.end());
  free_.resize(free_.size() - pages);
  std::reverse(out.begin(), out.end());
  return out;
}

void KvPool::Free(const std::vector<int32_t>& pages) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.insert(free_.end(), pages.rbegin(), pages.rend());
}

int64_t KvPool::free_pages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(free_.size());
}

int64_t SequenceKv::capacity() const {
  return static_cast<int64_t>(lease_->pages().size()) * lease_->pool()->page_tokens();
}

void SequenceKv::Append(int64_t layer, int64_t start, const torch::Tensor& k, const torch::Tensor& v) {
  KvPool* pool = lease_->pool();
  const int64_t pt = pool->page_tokens();
  const auto& pages = lease_->pages();
  const int64_t t = k.size(0);
  const auto& pk = pool->k(layer);
  // On the CPU, each token's [kv_heads, head_dim] row is copied with memcpy (LibTorch's
  // narrow + copy_ per page cost more than the copy itself for a decode step's one token).
  if (pk.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() && k.scalar_type() == pk.scalar_type() &&
      v.scalar_type() == pk.scalar_type() && k.dim() == 3 && v.dim() == 3 && k.stride(2) == 1 &&
      v.stride(2) == 1 && k.stride(1) == k.size(2) && v.stride(1) == v.size(2) &&
      static_cast<size_t>(k.size(1) * k.size(2) * k.element_size()) == pool->token_bytes() &&
      static_cast<size_t>(v.size(1) * v.size(2) * v.element_size()) == pool->token_bytes()) {
    const size_t tb = pool->token_bytes();
    const auto* kp = static_cast<const std::byte*>(k.data_ptr());
    const auto* vp = static_cast<const std::byte*>(v.data_ptr());
    for (int64_t i = 0; i < t; ++i) {
      const int64_t pos = start + i;
      const int32_t page = pages[pos / pt];
      const size_t off = static_cast<size_t>(pos % pt) * tb;
      std::memcpy(pool->KPage(layer, page) + off, kp + i * k.stride(0) * k.element_size(), tb);
      std::memcpy(pool->VPage(layer, page) + off, vp + i * v.stride(0) * v.element_size(), tb);
    }
    return;
  }
  for (int64_t i = 0; i < t;) {
    const int64_t pos = start + i;
    const int64_t page = pages[pos / pt], off = pos % pt;
    const int64_t n = std::min(t - i, pt - off);
    pool->k(layer)[page].narrow(0, off, n).copy_(k.narrow(0, i, n));
    pool->v(layer)[page].narrow(0, off, n).copy_(v.narrow(0, i, n));
    i += n;
  }
}

std::pair<torch::Tensor, torch::Tensor> SequenceKv::Gather(int64_t layer, int64_t end) {
  KvPool* pool = lease_->pool();
  const int64_t pt = pool->page_tokens();
  const int64_t n_pages = (end + pt - 1) / pt;
  const auto& pages = lease_->pages();
  auto idx = torch::tensor(std::vector<int64_t>(pages.begin(), pages.begin() + n_pages),
                           torch::TensorOptions().dtype(torch::kInt64)).to(pool->k(layer).device());
  const auto& k = pool->k(layer);
  auto keys = k.index_select(0, idx).view({n_pages * pt, k.size(2), k.size(3)}).narrow(0, 0, end);
  auto values = pool->v(layer).index_select(0, idx).view({n_pages * pt, k.size(2), k.size(3)}).narrow(0, 0, end);
  return {keys, values};
}

std::vector<std::pair<torch::Tensor, torch::Tensor>> SequenceKv::Blocks(int64_t layer, int64_t end) {
  KvPool* pool = lease_->pool();
  const int64_t pt = pool->page_tokens();
  const auto& pages = lease_->pages();
  const auto& k = pool->k(layer);
  const auto& v = pool->v(layer);
  std::vector<std::pair<torch::Tensor, torch::Tensor>> out;
  for (int64_t p = 0; p * pt < end;) {
    int64_t run = 1;  // adjacent pages in the pool: one piece
    while ((p + run) * pt < end && pages[p + run] == pages[p] + run) ++run;
    const int64_t n = std::min(run * pt, end - p * pt);
    const std::vector<int64_t> shape{run * pt, k.size(2), k.size(3)};
    out.emplace_back(k.narrow(0, pages[p], run).view(shape).narrow(0, 0, n),
                     v.narrow(0, pages[p], run).view(shape).narrow(0, 0, n));
    p += run;
  }
  return out;
}

}  // namespace kvault::engine
