#include "store/record_format.h"

#include <xxhash.h>

#include <cstring>
#include <string>

#include "store/little_endian.h"

namespace kvault {
namespace {

// Field offsets of the encoded RecordHeader (see docs/FORMAT.md).
constexpr size_t kOffMagic = 0, kOffVersion = 8, kOffHeaderBytes = 12, kOffKey = 16, kOffParent = 48,
                 kOffNs = 80, kOffLayers = 112, kOffHeads = 116, kOffHeadDim = 120, kOffDType = 124,
                 kOffRope = 125, kOffCodec = 126, kOffReserved = 127, kOffChunkTokens = 128, kOffTokens = 132,
                 kOffPayloadBytes = 136, kOffPayloadChecksum = 144, kOffSeq = 152, kOffHeaderChecksum = 160;
static_assert(kOffHeaderChecksum + 8 == kHeaderBytes);

constexpr size_t kTrOffMagic = 0, kTrOffVersion = 8, kTrOffEntries = 12, kTrOffIndexOffset = 16,
                 kTrOffIndexBytes = 24, kTrOffIndexChecksum = 32, kTrOffChecksum = 40;

uint64_t Xxh(const void* p, size_t n) { return XXH3_64bits(p, n); }

}  // namespace

uint64_t Checksum(std::span<const std::byte> data) { return Xxh(data.data(), data.size()); }

void EncodeHeader(const RecordHeader& h, uint8_t* out) {
  std::memset(out, 0, kHeaderBytes);
  EncodeLE64(out + kOffMagic, kRecordMagic);
  EncodeLE32(out + kOffVersion, h.codec == KvCodec::kNone ? kRecordVersionRaw : kRecordVersionCodec);
  EncodeLE32(out + kOffHeaderBytes, kHeaderBytes);
  std::memcpy(out + kOffKey, h.key.bytes.data(), 32);
  std::memcpy(out + kOffParent, h.parent.bytes.data(), 32);
  std::memcpy(out + kOffNs, h.ns_id.bytes.data(), 32);
  EncodeLE32(out + kOffLayers, h.layout.num_layers);
  EncodeLE32(out + kOffHeads, h.layout.num_kv_heads);
  EncodeLE32(out + kOffHeadDim, h.layout.head_dim);
  out[kOffDType] = static_cast<uint8_t>(h.layout.dtype);
  out[kOffRope] = static_cast<uint8_t>(h.layout.rope);
  out[kOffCodec] = static_cast<uint8_t>(h.codec);  // zero (reserved) in a version-1 record
  EncodeLE32(out + kOffChunkTokens, h.layout.chunk_tokens);
  EncodeLE32(out + kOffTokens, h.tokens);
  EncodeLE64(out + kOffPayloadBytes, h.payload_bytes);
  EncodeLE64(out + kOffPayloadChecksum, h.payload_checksum);
  EncodeLE64(out + kOffSeq, h.seq);
  EncodeLE64(out + kOffHeaderChecksum, Xxh(out, kOffHeaderChecksum));
}

bool HasRecordMagic(const uint8_t* in) { return DecodeLE64(in + kOffMagic) == kRecordMagic; }

Status DecodeHeader(const uint8_t* in, RecordHeader* h) {
  if (!HasRecordMagic(in)) return Status::Corruption("bad record magic");
  if (DecodeLE64(in + kOffHeaderChecksum) != Xxh(in, kOffHeaderChecksum)) return Status::Corruption("bad header checksum");
  const uint32_t version = DecodeLE32(in + kOffVersion);
  if (version != kRecordVersionRaw && version != kRecordVersionCodec) return Status::Corruption("unsupported record version");
  if (DecodeLE32(in + kOffHeaderBytes) != kHeaderBytes) return Status::Corruption("bad header size");
  std::memcpy(h->key.bytes.data(), in + kOffKey, 32);
  std::memcpy(h->parent.bytes.data(), in + kOffParent, 32);
  std::memcpy(h->ns_id.bytes.data(), in + kOffNs, 32);
  h->layout.num_layers = DecodeLE32(in + kOffLayers);
  h->layout.num_kv_heads = DecodeLE32(in + kOffHeads);
  h->layout.head_dim = DecodeLE32(in + kOffHeadDim);
  h->layout.dtype = static_cast<DType>(in[kOffDType]);
  h->layout.rope = static_cast<RopeMode>(in[kOffRope]);
  h->layout.chunk_tokens = DecodeLE32(in + kOffChunkTokens);
  h->tokens = DecodeLE32(in + kOffTokens);
  h->codec = KvCodec::kNone;
  if (version == kRecordVersionRaw && (in[kOffCodec] != 0 || in[kOffReserved] != 0)) {
    return Status::Corruption("reserved header bytes of a version-1 record are not zero");
  }
  if (version == kRecordVersionCodec) {
    const uint8_t id = in[kOffCodec];
    if (id != static_cast<uint8_t>(KvCodec::kNone) && id != static_cast<uint8_t>(KvCodec::kInt8) &&
        id != static_cast<uint8_t>(KvCodec::kInt4)) {
      return Status::Corruption("unknown codec id " + std::to_string(id) + " in record header");
    }
    if (in[kOffReserved] != 0) return Status::Corruption("reserved header byte is not zero");
    h->codec = static_cast<KvCodec>(id);
  }
  h->payload_bytes = DecodeLE64(in + kOffPayloadBytes);
  h->payload_checksum = DecodeLE64(in + kOffPayloadChecksum);
  h->seq = DecodeLE64(in + kOffSeq);
  if (!h->layout.Validate().ok()) return Status::Corruption("bad layout in header");
  if (h->tokens == 0 || h->tokens > h->layout.chunk_tokens) return Status::Corruption("bad token count");
  if (h->codec != KvCodec::kNone && !KvCodecSupports(h->codec, h->layout).ok()) {
    return Status::Corruption(std::string("record codec ") + KvCodecName(h->codec) + " cannot encode its layout");
  }
  if (h->payload_bytes != StoredPayloadBytes(h->codec, h->layout, h->tokens)) {
    return Status::Corruption("payload size does not match layout and codec");
  }
  return Status::OK();
}

PayloadChecksum::PayloadChecksum() : state_(XXH3_createState()) { XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_)); }
PayloadChecksum::~PayloadChecksum() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void PayloadChecksum::Update(std::span<const std::byte> piece) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), piece.data(), piece.size());
}
uint64_t PayloadChecksum::Digest() const { return XXH3_64bits_digest(static_cast<XXH3_state_t*>(state_)); }

void EncodeTrailer(const SegmentTrailer& t, uint8_t* out) {
  std::memset(out, 0, kBlockBytes);
  EncodeLE64(out + kTrOffMagic, kTrailerMagic);
  EncodeLE32(out + kTrOffVersion, kTrailerVersion);
  EncodeLE32(out + kTrOffEntries, t.entries);
  EncodeLE64(out + kTrOffIndexOffset, t.index_offset);
  EncodeLE64(out + kTrOffIndexBytes, t.index_bytes);
  EncodeLE64(out + kTrOffIndexChecksum, t.index_checksum);
  EncodeLE64(out + kTrOffChecksum, Xxh(out, kTrOffChecksum));
}

Status DecodeTrailer(const uint8_t* in, SegmentTrailer* t) {
  if (DecodeLE64(in + kTrOffMagic) != kTrailerMagic) return Status::Corruption("no trailer");
  if (DecodeLE64(in + kTrOffChecksum) != Xxh(in, kTrOffChecksum)) return Status::Corruption("bad trailer checksum");
  if (DecodeLE32(in + kTrOffVersion) != kTrailerVersion) return Status::Corruption("unsupported trailer version");
  t->entries = DecodeLE32(in + kTrOffEntries);
  t->index_offset = DecodeLE64(in + kTrOffIndexOffset);
  t->index_bytes = DecodeLE64(in + kTrOffIndexBytes);
  t->index_checksum = DecodeLE64(in + kTrOffIndexChecksum);
  if (t->index_bytes != uint64_t{t->entries} * kIndexEntryBytes) return Status::Corruption("bad index size");
  if (t->index_offset % kBlockBytes != 0) return Status::Corruption("misaligned index");
  return Status::OK();
}

}  // namespace kvault
