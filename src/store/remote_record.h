// The value format of the cluster tier (T3): one chunk record, self-describing and checked.
//
//   [RecordHeader, encoded as in record_format.h: kHeaderBytes, header checksum included]
//   [payload: exactly header.payload_bytes stored bytes, no padding: raw (version 1), or
//    header.codec's encoding (version 2; StoreOptions::t3_codec)]
//
// The header carries the chunk's full key, its namespace id, layout, token count, codec and
// the stored payload's XXH3-64, so a reader can prove a value is the chunk it asked for, and
// decodes it by the value's own codec and layout.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "store/record_format.h"

namespace kvault {

// The name of chunk `key` of namespace `ns_id` in the cluster tier: SHA-256(ns_id || key). A
// client asking for another namespace's chunk key under its own namespace names a value that
// does not exist, so it learns nothing (and fetches nothing) from the shared tier.
ChunkKey ClusterKey(const Digest& ns_id, const ChunkKey& key);

// Header then the payload's pieces, concatenated. REQUIRES: the pieces add up to
// h.payload_bytes and h.payload_checksum is their checksum.
std::vector<std::byte> EncodeRemoteRecord(const RecordHeader& h,
                                          std::span<const std::span<const std::byte>> payload);

// Checks `value` as the record of `expected_key`: header magic/version/checksum, the key, the
// payload's size and checksum. On success *h is the header and *payload the payload bytes
// (a view into `value`). kCorruption otherwise.
Status DecodeRemoteRecord(std::span<const std::byte> value, const ChunkKey& expected_key, RecordHeader* h,
                          std::span<const std::byte>* payload);

}  // namespace kvault
