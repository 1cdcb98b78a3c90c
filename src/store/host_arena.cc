#include "store/host_arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace kvault {

namespace {

// A memfd of `bytes` mapped MAP_SHARED; huge pages first when asked and reserved.
Result<std::pair<void*, int>> MapShared(uint64_t bytes, bool huge_pages, bool* huge) {
  int fd = -1;
  *huge = false;
  if (huge_pages && bytes % (2u << 20) == 0) {
    fd = memfd_create("kvault-t1", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB);
    if (fd >= 0 && ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      close(fd);
      fd = -1;
    }
    *huge = fd >= 0;
  }
  if (fd < 0) {
    fd = memfd_create("kvault-t1", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return Status::FromErrno(errno, "memfd_create for the shared dram arena");
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      Status st = Status::FromErrno(errno, "size the shared dram arena");
      close(fd);
      return st;
    }
  }
  // Sealed at its size: a process it is shared with cannot shrink it under the store (SIGBUS).
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    Status st = Status::FromErrno(errno, "seal the shared dram arena");
    close(fd);
    return st;
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED && *huge) {  // reserved huge pages ran out: plain pages
    close(fd);
    return MapShared(bytes, /*huge_pages=*/false, huge);
  }
  if (p == MAP_FAILED) {
    Status st = Status::FromErrno(errno, "mmap the shared dram arena");
    close(fd);
    return st;
  }
  if (!*huge && huge_pages) *huge = madvise(p, bytes, MADV_HUGEPAGE) == 0;
  return std::make_pair(p, fd);
}

}  // namespace

Result<std::unique_ptr<HostArena>> HostArena::Create(uint64_t capacity_bytes, uint32_t page_bytes, bool huge_pages,
                                                     bool prefault, bool shared) {
  if (page_bytes == 0 || page_bytes % 4096 != 0) return Status::InvalidArgument("page_bytes must be a multiple of 4096");
  uint64_t pages = capacity_bytes / page_bytes;
  if (pages == 0) return Status::InvalidArgument("dram capacity is smaller than one page");
  if (pages > UINT32_MAX) return Status::InvalidArgument("too many pages");
  uint64_t bytes = pages * page_bytes;
  void* p = MAP_FAILED;
  bool huge = false;
  int fd = -1;
  if (shared) {
    auto m = MapShared(bytes, huge_pages, &huge);
    if (!m.ok()) return m.status();
    p = m->first;
    fd = m->second;
  } else if (huge_pages && bytes % (2u << 20) == 0) {
    // Explicit huge pages exist only where the administrator reserved them. No
    // MAP_NORESERVE here: it would let the mapping succeed and fault with SIGBUS later.
    p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    huge = p != MAP_FAILED;
  }
  if (p == MAP_FAILED) {
    p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return Status::FromErrno(errno, "mmap dram arena");
    // Otherwise transparent huge pages, where the kernel has them.
    if (huge_pages) huge = madvise(p, bytes, MADV_HUGEPAGE) == 0;
  }
  if (prefault) {
    // After MADV_HUGEPAGE, so the pages come in huge where the kernel can.
    for (uint64_t off = 0; off < bytes; off += 4096) static_cast<volatile char*>(p)[off] = 0;
  }
  return std::unique_ptr<HostArena>(new HostArena(static_cast<std::byte*>(p), bytes, page_bytes,
                                                  static_cast<uint32_t>(pages), huge, fd));
}

HostArena::HostArena(std::byte* base, uint64_t map_bytes, uint32_t page_bytes, uint32_t pages, bool huge, int fd)
    : base_(base), fd_(fd), map_bytes_(map_bytes), page_bytes_(page_bytes), total_pages_(pages), huge_(huge) {
  free_.resize(pages);
  for (uint32_t i = 0; i < pages; ++i) free_[i] = pages - 1 - i;  // page 0 comes out first
}

HostArena::~HostArena() {
  munmap(base_, map_bytes_);
  if (fd_ >= 0) close(fd_);
}

PageList HostArena::Allocate(uint32_t n) {
  PageList out(free_.end() - n, free_.end());
  free_.resize(free_.size() - n);
  std::reverse(out.begin(), out.end());
  return out;
}

void HostArena::Free(const PageList& pages) {
  // Pushed in reverse so the next Allocate of the same size gets the same ascending run.
  free_.insert(free_.end(), pages.rbegin(), pages.rend());
}

void HostArena::ForEachPiece(const PageList& pages, uint64_t offset, uint64_t size,
                             const std::function<void(std::byte*, size_t)>& fn) const {
  std::byte* run = nullptr;
  size_t run_len = 0;
  while (size > 0) {
    uint64_t page_index = offset / page_bytes_;
    uint64_t in_page = offset % page_bytes_;
    size_t n = static_cast<size_t>(std::min<uint64_t>(size, page_bytes_ - in_page));
    std::byte* p = PagePtr(pages[page_index]) + in_page;
    if (run != nullptr && run + run_len == p) {
      run_len += n;
    } else {
      if (run != nullptr) fn(run, run_len);
      run = p;
      run_len = n;
    }
    offset += n;
    size -= n;
  }
  if (run != nullptr) fn(run, run_len);
}

}  // namespace kvault
