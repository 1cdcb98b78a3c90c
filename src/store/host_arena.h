// HostArena: the DRAM tier's memory, one mapping cut into equal pages.
//
// A chunk takes ceil(bytes / page_bytes) pages that need not be adjacent, so any mix of
// layouts shares the arena without fragmentation and the cap is exact. Pages are handed out
// in ascending order when possible so a chunk's pages are usually one contiguous run.
// Thread-safety: none; the store calls it with its mutex held.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "kvault/status.h"

namespace kvault {

using PageList = std::vector<uint32_t>;

class HostArena {
 public:
  // `shared`: the memory is a memfd mapped MAP_SHARED, so other processes can map it too
  // (kvaultd hands fd() to its clients); otherwise private anonymous memory.
  static Result<std::unique_ptr<HostArena>> Create(uint64_t capacity_bytes, uint32_t page_bytes, bool huge_pages,
                                                   bool prefault = false, bool shared = false);
  ~HostArena();
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  uint32_t page_bytes() const { return page_bytes_; }
  uint32_t total_pages() const { return total_pages_; }
  uint32_t free_pages() const { return static_cast<uint32_t>(free_.size()); }
  uint64_t capacity_bytes() const { return uint64_t{total_pages_} * page_bytes_; }
  uint64_t used_bytes() const { return uint64_t{total_pages_ - free_pages()} * page_bytes_; }
  uint32_t PagesFor(uint64_t bytes) const { return static_cast<uint32_t>((bytes + page_bytes_ - 1) / page_bytes_); }
  bool huge_pages() const { return huge_; }
  int fd() const { return fd_; }  // the memfd when shared, else -1
  std::byte* base() const { return base_; }
  uint64_t map_bytes() const { return map_bytes_; }

  // Takes n pages; REQUIRES n <= free_pages().
  PageList Allocate(uint32_t n);
  void Free(const PageList& pages);

  std::byte* PagePtr(uint32_t page) const { return base_ + uint64_t{page} * page_bytes_; }

  // Calls fn on the pieces of payload bytes [offset, offset + size) of a chunk stored in
  // `pages`, merging adjacent pages into one piece.
  void ForEachPiece(const PageList& pages, uint64_t offset, uint64_t size,
                    const std::function<void(std::byte*, size_t)>& fn) const;

 private:
  HostArena(std::byte* base, uint64_t map_bytes, uint32_t page_bytes, uint32_t pages, bool huge, int fd);
  std::byte* base_;
  int fd_;
  uint64_t map_bytes_;
  uint32_t page_bytes_;
  uint32_t total_pages_;
  bool huge_;
  std::vector<uint32_t> free_;  // a stack; the back is handed out first
};

}  // namespace kvault
