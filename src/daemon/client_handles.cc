// The chunk readers and writers kvault::Client hands out: through the daemon's T1 mapping
// (pins and slots held by the connection they came from) or on bytes that travel inline.
#include <cstring>
#include <functional>

#include "daemon/client_impl.h"
#include "store/byte_ranges.h"

namespace kvault {

using wire::MsgType;
using wire::Piece;

namespace {

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

class SharedChunkReader final : public ChunkReaderBackend {
 public:
  SharedChunkReader(ClientImpl* c, std::shared_ptr<ClientConnection> conn, std::vector<Piece> pieces, uint64_t handle)
      : c_(c), conn_(std::move(conn)), pieces_(std::move(pieces)), handle_(handle) {}
  ~SharedChunkReader() override { c_->SendHandle(MsgType::kRelease, handle_, conn_.get()); }
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
  std::shared_ptr<ClientConnection> conn_;  // keeps the pin (the socket) and the mapping
  std::vector<Piece> pieces_;
  uint64_t handle_;
};

// The payload as it arrived: the reply frame itself, kept (no copy) with the payload's place.
class InlineChunkReader final : public ChunkReaderBackend {
 public:
  InlineChunkReader(std::vector<std::byte> frame, size_t payload_at) : frame_(std::move(frame)), at_(payload_at) {}
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
class SharedChunkWriter final : public ChunkWriterBackend {
 public:
  SharedChunkWriter(ClientImpl* c, std::shared_ptr<ClientConnection> conn, std::vector<Piece> pieces, uint64_t handle)
      : c_(c), conn_(std::move(conn)), pieces_(std::move(pieces)), handle_(handle) {}
  ~SharedChunkWriter() override {
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
  std::shared_ptr<ClientConnection> conn_;  // keeps the slot (the socket) and the mapping
  std::vector<Piece> pieces_;
  uint64_t handle_;
  ByteRanges written_;
  bool committed_ = false;
};

// Buffers the payload here and sends it whole at Commit.
class InlineChunkWriter final : public ChunkWriterBackend {
 public:
  InlineChunkWriter(ClientImpl* c, std::shared_ptr<ClientConnection> conn, size_t bytes, uint64_t handle)
      : c_(c), conn_(std::move(conn)), data_(bytes), handle_(handle) {}
  ~InlineChunkWriter() override {
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
  std::shared_ptr<ClientConnection> conn_;
  std::vector<std::byte> data_;
  uint64_t handle_;
  ByteRanges written_;
  bool committed_ = false;
};

}  // namespace

std::unique_ptr<ChunkReaderBackend> ClientImpl::SharedReader(std::shared_ptr<ClientConnection> conn, std::vector<Piece> pieces,
                                                             uint64_t handle) {
  return std::make_unique<SharedChunkReader>(this, std::move(conn), std::move(pieces), handle);
}

std::unique_ptr<ChunkReaderBackend> ClientImpl::InlineReader(std::vector<std::byte> frame, size_t payload_at) {
  return std::make_unique<InlineChunkReader>(std::move(frame), payload_at);
}

std::unique_ptr<ChunkWriterBackend> ClientImpl::SharedWriter(std::shared_ptr<ClientConnection> conn, std::vector<Piece> pieces,
                                                             uint64_t handle) {
  return std::make_unique<SharedChunkWriter>(this, std::move(conn), std::move(pieces), handle);
}

std::unique_ptr<ChunkWriterBackend> ClientImpl::InlineWriter(std::shared_ptr<ClientConnection> conn, size_t bytes,
                                                             uint64_t handle) {
  return std::make_unique<InlineChunkWriter>(this, std::move(conn), bytes, handle);
}

}  // namespace kvault
