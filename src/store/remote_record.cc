#include "store/remote_record.h"

#include <cstring>

namespace kvault {

ChunkKey ClusterKey(const Digest& ns_id, const ChunkKey& key) {
  std::byte both[64];
  std::memcpy(both, ns_id.bytes.data(), 32);
  std::memcpy(both + 32, key.bytes.data(), 32);
  return Sha256(std::span<const std::byte>(both));
}

std::vector<std::byte> EncodeRemoteRecord(const RecordHeader& h,
                                          std::span<const std::span<const std::byte>> payload) {
  std::vector<std::byte> out(kHeaderBytes + h.payload_bytes);
  EncodeHeader(h, reinterpret_cast<uint8_t*>(out.data()));
  size_t at = kHeaderBytes;
  for (std::span<const std::byte> piece : payload) {
    std::memcpy(out.data() + at, piece.data(), piece.size());
    at += piece.size();
  }
  return out;
}

Status DecodeRemoteRecord(std::span<const std::byte> value, const ChunkKey& expected_key, RecordHeader* h,
                          std::span<const std::byte>* payload) {
  if (value.size() < kHeaderBytes) return Status::Corruption("remote record shorter than its header");
  KVAULT_RETURN_IF_ERROR(DecodeHeader(reinterpret_cast<const uint8_t*>(value.data()), h));
  if (h->key != expected_key) return Status::Corruption("remote record holds another key");
  if (value.size() - kHeaderBytes != h->payload_bytes) return Status::Corruption("remote record has the wrong size");
  *payload = value.subspan(kHeaderBytes);
  if (Checksum(*payload) != h->payload_checksum) return Status::Corruption("remote record payload checksum mismatch");
  return Status::OK();
}

}  // namespace kvault
