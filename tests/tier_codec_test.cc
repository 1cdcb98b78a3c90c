// Compressed lower tiers (docs/STORE.md, "Compressed lower tiers"; docs/FORMAT.md, version 2):
// a store whose T2 (or T3) codec is int8 or int4 encodes chunks when it writes them there and
// decodes them when they come back into T1. Here: chunks demoted, restarted and read back
// within the codec's error bound (exact for none); prefetch and compaction decode the same;
// records of several codecs and versions in one store; chunks a codec cannot take stored raw;
// a damaged encoded record or an unknown codec id is a counted miss, never data; an int4 T2
// holds more chunks in the same bytes; T3 values encoded and decoded by their own header.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <gtest/gtest.h>

#include "kvault/kv_codec.h"
#include "store/embedded_store.h"
#include "store/inspect.h"
#include "store/little_endian.h"
#include "store/record_format.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::ChunkSpan;
using kvault::KvCodec;
using kvault::kBlockBytes;
using kvault::Tier;

// ---- KV-like payloads and their comparison ------------------------------------------------

uint16_t ToBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even (finite inputs only)
  return static_cast<uint16_t>(u >> 16);
}
float FromBf16(uint16_t h) { return std::bit_cast<float>(uint32_t{h} << 16); }

// The payload of chunk `key` (layout bf16): per layer K then V, [tokens][heads][head_dim],
// normal values with a few outlier channels in K (what real keys look like), from a PRNG
// seeded by the key: any reader can rebuild the original from the key alone.
std::vector<std::byte> KvPayload(const ChunkKey& key, const KvLayout& l, uint32_t tokens) {
  uint64_t seed = 0;
  std::memcpy(&seed, key.bytes.data(), sizeof seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::byte> out(l.chunk_bytes(tokens));
  auto* v = reinterpret_cast<uint16_t*>(out.data());
  size_t i = 0;
  for (uint32_t layer = 0; layer < l.num_layers; ++layer) {
    for (int part = 0; part < 2; ++part) {
      for (uint32_t t = 0; t < tokens; ++t) {
        for (uint32_t h = 0; h < l.num_kv_heads; ++h) {
          for (uint32_t c = 0; c < l.head_dim; ++c) {
            const float scale = part == 0 && c % 11 == 3 ? 8.0f : 1.0f;
            v[i++] = ToBf16(normal(rng) * scale);
          }
        }
      }
    }
  }
  return out;
}

// Why `got` is not `want` decoded through `codec` (empty when it is). The bounds follow from
// each codec's construction (docs/CODECS.md):
//  * none: exact.
//  * int8, symmetric per (token, head) with scale absmax/127: |error| <= absmax/254 per value,
//    plus the fp16 scale's and the bf16 output's rounding: <= absmax/127 per value.
//  * int4 (orthonormal rotation of each head's vector, then 16 levels): in the rotated basis a
//    value y of vector x has |y| <= |x|, so a group's range is at most twice the largest norm
//    M among its vectors, and each coordinate errs by at most range/30 <= M/15; the rotation
//    keeps norms, so |error of a vector| <= sqrt(head_dim) * M / 15 (M = |v| for V, which is
//    quantized per token; M = the largest |k| of the head over the chunk for K, quantized per
//    channel over tokens). 3% slack for the fp16 scales and the bf16 output.
// Also the relative RMS error over the chunk: at most `max_rel_rms` (a tight, measured bound:
// a codec that returned the wrong layer, head or layout would be far above it).
std::string CompareDecoded(KvCodec codec, const KvLayout& l, uint32_t tokens, std::span<const std::byte> want,
                           std::span<const std::byte> got, double max_rel_rms, double* rel_rms_out = nullptr) {
  if (want.size() != got.size()) return "size " + std::to_string(got.size()) + " != " + std::to_string(want.size());
  if (codec == KvCodec::kNone) {
    return std::memcmp(want.data(), got.data(), want.size()) == 0 ? "" : "bytes differ (codec none must be exact)";
  }
  const auto* w = reinterpret_cast<const uint16_t*>(want.data());
  const auto* g = reinterpret_cast<const uint16_t*>(got.data());
  const uint32_t d = l.head_dim, heads = l.num_kv_heads;
  double err2 = 0, norm2 = 0;
  auto at = [&](uint32_t layer, int part, uint32_t t, uint32_t h, uint32_t c) {
    return (((size_t{layer} * 2 + part) * tokens + t) * heads + h) * d + c;
  };
  for (uint32_t layer = 0; layer < l.num_layers; ++layer) {
    for (int part = 0; part < 2; ++part) {
      for (uint32_t h = 0; h < heads; ++h) {
        double head_max_norm = 0;  // M of a K channel group: the largest |k_t| of this head
        for (uint32_t t = 0; t < tokens; ++t) {
          double n2 = 0;
          for (uint32_t c = 0; c < d; ++c) n2 += std::pow(FromBf16(w[at(layer, part, t, h, c)]), 2);
          head_max_norm = std::max(head_max_norm, std::sqrt(n2));
        }
        for (uint32_t t = 0; t < tokens; ++t) {
          double absmax = 0, n2 = 0, e2 = 0, worst = 0;
          for (uint32_t c = 0; c < d; ++c) {
            const double x = FromBf16(w[at(layer, part, t, h, c)]);
            const double y = FromBf16(g[at(layer, part, t, h, c)]);
            if (!std::isfinite(y)) return "non-finite value decoded";
            absmax = std::max(absmax, std::abs(x));
            n2 += x * x;
            e2 += (x - y) * (x - y);
            worst = std::max(worst, std::abs(x - y));
          }
          err2 += e2;
          norm2 += n2;
          const std::string where = "layer " + std::to_string(layer) + (part == 0 ? " K" : " V") + " token " +
                                    std::to_string(t) + " head " + std::to_string(h);
          if (codec == KvCodec::kInt8 && worst > absmax / 127.0 + 1e-12) {
            return where + ": int8 error " + std::to_string(worst) + " > absmax/127 = " + std::to_string(absmax / 127);
          }
          if (codec == KvCodec::kInt4) {
            const double m = part == 0 ? head_max_norm : std::sqrt(n2);
            const double bound = 1.03 * std::sqrt(double(d)) * m / 15.0 + 1e-12;
            if (std::sqrt(e2) > bound) {
              return where + ": int4 error norm " + std::to_string(std::sqrt(e2)) + " > " + std::to_string(bound);
            }
          }
        }
      }
    }
  }
  const double rel = norm2 > 0 ? std::sqrt(err2 / norm2) : 0;
  if (rel_rms_out != nullptr) *rel_rms_out = rel;
  if (rel > max_rel_rms) return "relative RMS error " + std::to_string(rel) + " > " + std::to_string(max_rel_rms);
  return "";
}

// Measured on these payloads (the worst chunk): int8 0.0098, int4 0.068 relative RMS error
// (int8's scale follows the outlier channels of K; int4's rotation spreads them). The bounds
// leave room for other tunings of the codecs, and none for a decode of the wrong bytes
// (another layer's or head's values, or another layout's, err by ~1.4).
double MaxRelRms(KvCodec codec) {
  switch (codec) {
    case KvCodec::kNone: return 0;
    case KvCodec::kInt8: return 0.02;
    case KvCodec::kInt4: return 0.12;
  }
  return 0;
}

// ---- stores -------------------------------------------------------------------------------

// 16 KiB chunks (4 layers x 2 heads x 32 dims, bf16, 16 tokens), T1 of 8 of them: chains of
// 4 chunks put and flushed one after another are mostly demoted.
kvault::StoreOptions CodecOptions(const std::string& dir, KvCodec t2_codec) {
  kvault::StoreOptions o = SmallOptions(dir);
  o.page_bytes = 4096;  // a chunk takes 4 pages, not always adjacent: layers across pages
  o.t1_bytes = 8 * (16u << 10);
  o.prefetch_bytes = o.t1_bytes;
  o.t2_codec = t2_codec;
  return o;
}

std::unique_ptr<Store> OpenStore(const kvault::StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s.value()) : nullptr;
}

struct Chunk {
  ChunkSpan span;
  std::vector<uint32_t> tokens;  // the chain's, for hints
  KvCodec stored_as = KvCodec::kNone;  // what a read must match
};

// Puts `chains` chains of `chain_tokens` tokens (seeds from `first_seed`), flushing after each
// so that nothing is dropped from T1 unwritten. Returns their chunks, marked `stored_as`.
std::vector<Chunk> PutChains(Store& store, const Namespace& ns, uint64_t first_seed, int chains, size_t chain_tokens,
                             KvCodec stored_as) {
  std::vector<Chunk> out;
  for (int c = 0; c < chains; ++c) {
    std::vector<uint32_t> tokens = MakeTokens(first_seed + c, chain_tokens);
    for (const ChunkSpan& s : kvault::ChunkKeys(ns, tokens)) {
      std::vector<std::byte> payload = KvPayload(s.key, ns.layout(), s.tokens);
      EXPECT_TRUE(store.Put(ns, s.parent, std::span(tokens).subspan(s.begin, s.tokens), payload).ok());
      out.push_back({s, tokens, stored_as});
    }
    EXPECT_TRUE(store.Flush().ok());
  }
  return out;
}

// Reads chunk c and checks it against its original under c.stored_as's bound. Empty: fine.
std::string ReadAndCompare(Store& store, const Namespace& ns, const Chunk& c, Tier* from = nullptr,
                           double* rel_rms = nullptr) {
  auto r = store.OpenChunk(ns, c.span.key);
  if (!r.ok()) return "OpenChunk: " + r.status().ToString();
  if (from != nullptr) *from = r->served_from();
  std::vector<std::byte> got(r->size());
  if (!r->ReadRange(0, got).ok()) return "ReadRange failed";
  const std::vector<std::byte> want = KvPayload(c.span.key, ns.layout(), c.span.tokens);
  return CompareDecoded(c.stored_as, ns.layout(), c.span.tokens, want, got, MaxRelRms(c.stored_as), rel_rms);
}

// ---- segment files ------------------------------------------------------------------------

std::vector<std::string> SegmentFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename();
    if (name.rfind("seg-", 0) == 0 && name.ends_with(".kvs")) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void WriteAt(const std::string& path, uint64_t offset, const void* data, size_t n) {
  int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::pwrite(fd, data, n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
  ::close(fd);
}

// The header block of chunk `key`'s record, found by scanning the files for the record magic
// at a block boundary followed by the key (independent of the store's index code).
struct RecordPos {
  std::string path;
  uint64_t offset = 0;
  bool found = false;
};
RecordPos FindRecord(const std::string& dir, const ChunkKey& key) {
  for (const std::string& path : SegmentFiles(dir)) {
    const std::vector<uint8_t> bytes = ReadAll(path);
    for (uint64_t off = 0; off + kBlockBytes <= bytes.size(); off += kBlockBytes) {
      if (kvault::DecodeLE64(bytes.data() + off) == kvault::kRecordMagic &&
          std::memcmp(bytes.data() + off + 16, key.bytes.data(), 32) == 0) {
        return {path, off, true};
      }
    }
  }
  return {};
}

// ---- tests --------------------------------------------------------------------------------

class TierCodecTest : public ::testing::TestWithParam<KvCodec> {};

// Demoted, read back in the same process (promotion), restarted and read back again (every
// chunk from T2, decoded by its record's codec), and through the prefetcher: every chunk
// within its codec's bound (none: exact). The records on disk say their codec: version 1
// (byte 126 zero) for a raw record, version 2 with the codec id for an encoded one.
TEST_P(TierCodecTest, DemotedRestartedAndReadBackWithinBound) {
  const KvCodec codec = GetParam();
  TempDir dir("tier-codec");
  const KvLayout layout = MakeLayout(kvault::DType::kBF16, 4, 3, 32, 16);  // 6 KiB layers, 4 KiB pages
  const Namespace ns = MakeNamespace(layout);
  const kvault::StoreOptions o = CodecOptions(dir.path(), codec);
  std::vector<Chunk> chunks;
  uint64_t stored_bytes = 0, raw_bytes = 0;
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    // 6 x (4 whole chunks + a 5-token partial one): 30 chunks of 6 and 2 pages, T1 holds 32
    // pages. Mixed sizes leave a chunk's pages apart at times, and its 6 KiB layers cross
    // pages: the codec's scratch copies.
    chunks = PutChains(*store, ns, 100, 6, 69, codec);
    for (const Chunk& c : chunks) stored_bytes += kvault::EncodedChunkBytes(codec, layout, c.span.tokens);
    const kvault::StoreStats st = store->Stats();
    EXPECT_EQ(st.t1_dropped_unpersisted, 0u);
    EXPECT_EQ(st.t2_chunks_encoded, codec == KvCodec::kNone ? 0u : chunks.size()) << st.ToJson();
    EXPECT_EQ(st.codec_fallbacks, 0u);
    EXPECT_EQ(st.bytes_t1_to_t2, stored_bytes);
    // Two rounds in a shuffled order: promotions into pages that other sizes left apart.
    int promoted = 0;
    std::vector<const Chunk*> order;
    for (const Chunk& c : chunks) order.push_back(&c);
    std::mt19937_64 rng(7);
    for (int round = 0; round < 2; ++round) {
      std::shuffle(order.begin(), order.end(), rng);
      for (const Chunk* c : order) {
        Tier from = Tier::kNone;
        ASSERT_EQ(ReadAndCompare(*store, ns, *c, &from), "") << "chunk " << c->span.key.ShortHex();
        promoted += from == Tier::kT2;
      }
    }
    EXPECT_GT(promoted, 0);  // some came back from T2 in this process
  }
  // On disk: the codec in each record's header.
  const RecordPos pos = FindRecord(dir.path(), chunks[0].span.key);
  ASSERT_TRUE(pos.found);
  const std::vector<uint8_t> seg = ReadAll(pos.path);
  const uint8_t* hdr = seg.data() + pos.offset;
  EXPECT_EQ(kvault::DecodeLE32(hdr + 8), codec == KvCodec::kNone ? 1u : 2u);
  EXPECT_EQ(hdr[126], static_cast<uint8_t>(codec));
  EXPECT_EQ(hdr[127], 0);
  EXPECT_EQ(kvault::DecodeLE64(hdr + 136), kvault::EncodedChunkBytes(codec, layout, 16));

  double worst_rel = 0;
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    for (const Chunk& c : chunks) {
      Tier from = Tier::kNone;
      double rel = 0;
      ASSERT_EQ(ReadAndCompare(*store, ns, c, &from, &rel), "") << "chunk " << c.span.key.ShortHex();
      EXPECT_EQ(from, Tier::kT2);  // T1 starts empty
      worst_rel = std::max(worst_rel, rel);
    }
    const kvault::StoreStats st = store->Stats();
    EXPECT_EQ(st.t2_chunks_decoded, codec == KvCodec::kNone ? 0u : chunks.size()) << st.ToJson();
    EXPECT_EQ(st.bytes_t2_to_t1, stored_bytes);
    EXPECT_EQ(st.err_corruption + st.err_torn + st.err_load_miss, 0u) << st.ToJson();
  }
  if (codec != KvCodec::kNone) {
    EXPECT_GT(worst_rel, 0.0);  // it did go through the codec
  }
  std::printf("{\"codec\":\"%s\",\"worst_rel_rms\":%.5f}\n", kvault::KvCodecName(codec), worst_rel);

  // The prefetcher decodes too: a hint reads a chain's T2-only chunks into T1.
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    store->Hint(ns, {std::span<const uint32_t>(chunks[0].tokens)});
    store->WaitForPrefetch();
    const kvault::StoreStats st = store->Stats();
    EXPECT_EQ(st.prefetches, 5u) << st.ToJson();  // the chain's 4 whole chunks and its partial one
    for (int i = 0; i < 5; ++i) {
      Tier from = Tier::kNone;
      ASSERT_EQ(ReadAndCompare(*store, ns, chunks[i], &from), "");
      EXPECT_EQ(from, Tier::kT1);  // prefetched, decoded
    }
  }
  auto report = kvault::InspectDir(dir.path());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->clean());
  EXPECT_EQ(report->encoded_records, codec == KvCodec::kNone ? 0u : report->records.size());
  for (const Chunk& c : chunks) raw_bytes += layout.chunk_bytes(c.span.tokens);
  EXPECT_EQ(report->raw_bytes, raw_bytes);
}

INSTANTIATE_TEST_SUITE_P(Codecs, TierCodecTest, ::testing::Values(KvCodec::kNone, KvCodec::kInt8, KvCodec::kInt4),
                         [](const auto& info) { return std::string(kvault::KvCodecName(info.param)); });

// One store, three runs: raw records (version 1), then int8, then int4. Every chunk reads back
// by its own record's codec, whatever the store's setting is now.
TEST(TierCodecMixedTest, RecordsOfEveryCodecInOneStore) {
  TempDir dir("tier-codec-mixed");
  const KvLayout layout = MakeLayout();
  const Namespace ns = MakeNamespace(layout);
  std::vector<Chunk> all;
  uint64_t seed = 200;
  for (KvCodec codec : {KvCodec::kNone, KvCodec::kInt8, KvCodec::kInt4}) {
    auto store = OpenStore(CodecOptions(dir.path(), codec));
    ASSERT_TRUE(store);
    std::vector<Chunk> more = PutChains(*store, ns, seed, 3, 64, codec);
    seed += 3;
    all.insert(all.end(), more.begin(), more.end());
  }
  for (KvCodec now : {KvCodec::kNone, KvCodec::kInt4}) {
    kvault::StoreOptions o = CodecOptions(dir.path(), now);
    o.decode_threads = now == KvCodec::kNone ? 1 : 3;  // chunks decoded by several threads too
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    for (const Chunk& c : all) {
      ASSERT_EQ(ReadAndCompare(*store, ns, c), "") << "chunk stored as " << kvault::KvCodecName(c.stored_as);
    }
    const kvault::StoreStats st = store->Stats();
    EXPECT_EQ(st.t2_chunks_decoded, 24u) << st.ToJson();  // the int8 and int4 ones
  }
  auto report = kvault::InspectDir(dir.path());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->clean());
  EXPECT_EQ(report->records.size(), 36u);
  EXPECT_EQ(report->encoded_records, 24u);
}

// Chunks a codec cannot take are stored raw, exactly: an int4 T2 with a head_dim that is not a
// power of two, an f8 layout, and a chunk with a NaN (the codec refuses it).
TEST(TierCodecFallbackTest, ChunksTheCodecCannotTakeAreStoredRaw) {
  TempDir dir("tier-codec-raw");
  const kvault::StoreOptions o = CodecOptions(dir.path(), KvCodec::kInt4);
  const KvLayout odd = MakeLayout(kvault::DType::kBF16, 4, 2, 24, 16);  // int4 needs 2^k
  const KvLayout f8 = MakeLayout(kvault::DType::kF8, 4, 2, 32, 16);
  const KvLayout bf16 = MakeLayout();
  const Namespace ns_odd = MakeNamespace(odd), ns_f8 = MakeNamespace(f8), ns_nan = MakeNamespace(bf16, "nan");
  std::vector<std::pair<const Namespace*, ChunkSpan>> put;
  std::vector<std::byte> nan_payload;
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    for (const Namespace* ns : {&ns_odd, &ns_f8, &ns_nan}) {
      std::vector<uint32_t> tokens = MakeTokens(300, 16);
      const ChunkSpan s = kvault::ChunkKeys(*ns, tokens)[0];
      std::vector<std::byte> payload = PayloadFor(s.key, ns->layout().chunk_bytes(16));
      if (ns == &ns_nan) {
        payload = KvPayload(s.key, bf16, 16);
        const uint16_t nan = 0x7fc0;
        std::memcpy(payload.data() + 2 * 77, &nan, 2);
        nan_payload = payload;
      }
      ASSERT_TRUE(store->Put(*ns, s.parent, tokens, payload).ok());
      put.emplace_back(ns, s);
    }
    ASSERT_TRUE(store->Flush().ok());
    const kvault::StoreStats st = store->Stats();
    EXPECT_EQ(st.t2_chunks_encoded, 0u);
    EXPECT_EQ(st.codec_fallbacks, 3u) << st.ToJson();
  }
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  for (const auto& [ns, s] : put) {
    auto r = store->OpenChunk(*ns, s.key);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->served_from(), Tier::kT2);
    std::vector<std::byte> got(r->size());
    ASSERT_TRUE(r->ReadRange(0, got).ok());
    const std::vector<std::byte> want =
        ns == &ns_nan ? nan_payload : PayloadFor(s.key, ns->layout().chunk_bytes(16));
    EXPECT_TRUE(got == want) << ns->layout().ToString();
  }
  EXPECT_EQ(store->Stats().t2_chunks_decoded, 0u);
}

// A flipped byte in an encoded record's payload: a counted miss, never data; the other chunks
// still read. kvault inspect reports it.
TEST(TierCodecCorruptionTest, DamagedEncodedPayloadIsACountedMiss) {
  TempDir dir("tier-codec-corrupt");
  const KvLayout layout = MakeLayout();
  const Namespace ns = MakeNamespace(layout);
  const kvault::StoreOptions o = CodecOptions(dir.path(), KvCodec::kInt8);
  std::vector<Chunk> chunks;
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    chunks = PutChains(*store, ns, 400, 2, 64, KvCodec::kInt8);
  }
  const Chunk& victim = chunks[5];
  const RecordPos pos = FindRecord(dir.path(), victim.span.key);
  ASSERT_TRUE(pos.found);
  const uint64_t at = pos.offset + kBlockBytes + 1000;  // inside the encoded payload
  uint8_t b = ReadAll(pos.path)[at] ^ 0x10;
  WriteAt(pos.path, at, &b, 1);

  auto report = kvault::InspectDir(dir.path());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->corrupt, 1u);

  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  for (const Chunk& c : chunks) {
    const std::string why = ReadAndCompare(*store, ns, c);
    if (&c == &victim) {
      EXPECT_NE(why.find("NotFound"), std::string::npos) << why;
    } else {
      EXPECT_EQ(why, "") << "chunk " << c.span.key.ShortHex();
    }
  }
  const kvault::StoreStats st = store->Stats();
  EXPECT_EQ(st.err_corruption, 1u) << st.ToJson();
  EXPECT_EQ(st.t2_chunks_decoded, chunks.size() - 1);
}

// A record header that claims an unknown codec id (with a valid header checksum, as a newer
// build or a bit flip before checksumming could leave it): never decoded, never served. Read
// through the segment's index it is a counted corruption; found by the scan of a segment
// without a trailer it is skipped as torn.
TEST(TierCodecCorruptionTest, UnknownCodecIdIsNeverServed) {
  for (bool scanned : {false, true}) {
    SCOPED_TRACE(scanned ? "scanned segment" : "indexed segment");
    TempDir dir("tier-codec-id");
    const KvLayout layout = MakeLayout();
    const Namespace ns = MakeNamespace(layout);
    const kvault::StoreOptions o = CodecOptions(dir.path(), KvCodec::kInt8);
    std::vector<Chunk> chunks;
    {
      auto store = OpenStore(o);
      ASSERT_TRUE(store);
      chunks = PutChains(*store, ns, 500, 1, 64, KvCodec::kInt8);
    }
    const Chunk& victim = chunks[1];
    const RecordPos pos = FindRecord(dir.path(), victim.span.key);
    ASSERT_TRUE(pos.found);
    std::vector<uint8_t> hdr = ReadAll(pos.path);
    const uint64_t file_bytes = hdr.size();
    hdr = std::vector<uint8_t>(hdr.begin() + pos.offset, hdr.begin() + pos.offset + kvault::kHeaderBytes);
    hdr[126] = 9;  // no such codec
    kvault::EncodeLE64(hdr.data() + 160, kvault::Checksum(std::as_bytes(std::span(hdr.data(), 160))));
    WriteAt(pos.path, pos.offset, hdr.data(), hdr.size());
    kvault::RecordHeader h;
    EXPECT_EQ(kvault::DecodeHeader(hdr.data(), &h).code(), kvault::Code::kCorruption);
    if (scanned) {
      ASSERT_EQ(::truncate(pos.path.c_str(), static_cast<off_t>(file_bytes - kBlockBytes)), 0);
    }

    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    for (const Chunk& c : chunks) {
      const std::string why = ReadAndCompare(*store, ns, c);
      if (&c == &victim) {
        EXPECT_NE(why, "");
        EXPECT_NE(why.find("NotFound"), std::string::npos) << why;
      } else {
        EXPECT_EQ(why, "");
      }
    }
    const kvault::StoreStats st = store->Stats();
    if (scanned) {
      EXPECT_GE(st.err_torn, 1u) << st.ToJson();
    } else {
      EXPECT_EQ(st.err_corruption, 1u) << st.ToJson();
    }
  }
}

// The same T2 bytes hold more chunks encoded: chunks of 64 tokens (64 KiB raw, 68 KiB on disk)
// through a 1.25 MiB T2 with none and int4; the chunks still on T2 afterwards read back within
// bound (the int4 records moved by compaction or reclaim included).
TEST(TierCodecCapacityTest, Int4HoldsMoreChunksInTheSameBytes) {
  const KvLayout layout = MakeLayout(kvault::DType::kBF16, 4, 2, 32, 64);
  const Namespace ns = MakeNamespace(layout);
  std::map<KvCodec, size_t> survivors;
  for (KvCodec codec : {KvCodec::kNone, KvCodec::kInt4}) {
    TempDir dir("tier-codec-cap");
    kvault::StoreOptions o = SmallOptions(dir.path());
    o.page_bytes = 64u << 10;
    o.t1_bytes = 4 * (64u << 10);
    o.t2_bytes = 1280u << 10;
    o.segment_bytes = 320u << 10;
    o.t2_codec = codec;
    std::vector<Chunk> chunks;
    {
      auto store = OpenStore(o);
      ASSERT_TRUE(store);
      chunks = PutChains(*store, ns, 600, 30, 128, codec);  // 60 chunks: 4 MiB on disk raw
      const kvault::StoreStats st = store->Stats();
      EXPECT_LE(st.t2_used_bytes, o.t2_bytes);
      EXPECT_GT(st.t2_evictions, 0u) << st.ToJson();
      EXPECT_GT(st.t2_compactions, 0u) << st.ToJson();  // records moved as stored, read back below
    }
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    size_t alive = 0;
    for (const Chunk& c : chunks) {
      const std::string why = ReadAndCompare(*store, ns, c);
      if (why.find("NotFound") != std::string::npos) continue;  // given up for room
      EXPECT_EQ(why, "");
      ++alive;
    }
    EXPECT_EQ(store->Stats().err_corruption, 0u);
    survivors[codec] = alive;
  }
  std::printf("{\"t2_bytes\":%u,\"chunks_on_t2\":{\"none\":%zu,\"int4\":%zu}}\n", 1280u << 10,
              survivors[KvCodec::kNone], survivors[KvCodec::kInt4]);
  EXPECT_GT(survivors[KvCodec::kNone], 0u);
  EXPECT_GE(survivors[KvCodec::kInt4], 2 * survivors[KvCodec::kNone]);
}

// T3: values published encoded (t3_codec) and fetched by another node, decoded by the value's
// own header whatever that node's setting; raw values of an earlier node still read exactly; a
// damaged encoded value is a counted miss.
TEST(TierCodecClusterTest, EncodedValuesThroughASharedDirectory) {
  TempDir dir("tier-codec-t3");
  const KvLayout layout = MakeLayout();
  const Namespace ns = MakeNamespace(layout);
  auto options = [&](const std::string& name, KvCodec t3_codec) {
    kvault::StoreOptions o = CodecOptions(dir.Sub(name), KvCodec::kNone);
    o.t1_bytes = 64 * (16u << 10);  // nothing leaves T1 before the T3 writer copies it
    o.t3.kind = "shared-dir";
    o.t3.shared_dir = dir.Sub("shared");
    o.t3.shared_dir_sync = false;
    o.t3_codec = t3_codec;
    return o;
  };
  std::vector<Chunk> chunks;
  for (auto [name, codec] : {std::pair{"a", KvCodec::kNone}, std::pair{"b", KvCodec::kInt8}}) {
    auto store = OpenStore(options(name, codec));
    ASSERT_TRUE(store);
    std::vector<Chunk> more = PutChains(*store, ns, codec == KvCodec::kNone ? 700 : 710, 2, 64, codec);
    static_cast<kvault::EmbeddedStore&>(*store).WaitForClusterWrites();
    const kvault::StoreStats st = store->Stats();
    EXPECT_EQ(st.t3_puts, more.size());
    EXPECT_EQ(st.t3_chunks_encoded, codec == KvCodec::kNone ? 0u : more.size()) << st.ToJson();
    chunks.insert(chunks.end(), more.begin(), more.end());
  }
  // Node c (whose own setting does not matter) reads them all; then one int8 value with a
  // flipped payload byte is a counted miss on node d, never data.
  {
    auto store = OpenStore(options("c", KvCodec::kInt4));
    ASSERT_TRUE(store);
    for (const Chunk& c : chunks) {
      Tier from = Tier::kNone;
      ASSERT_EQ(ReadAndCompare(*store, ns, c, &from), "") << kvault::KvCodecName(c.stored_as);
      EXPECT_EQ(from, Tier::kT3);
    }
    const kvault::StoreStats st = store->Stats();
    EXPECT_EQ(st.t3_fetches, chunks.size());
    EXPECT_EQ(st.t3_chunks_decoded, chunks.size() / 2) << st.ToJson();
    EXPECT_EQ(st.err_t3, 0u);
  }
  std::string damaged;
  for (const auto& f : std::filesystem::recursive_directory_iterator(dir.Sub("shared"))) {
    if (f.path().extension() != ".kvr") continue;
    const std::vector<uint8_t> value = ReadAll(f.path());
    if (value.size() > kvault::kHeaderBytes + 100 && value[126] == static_cast<uint8_t>(KvCodec::kInt8)) {
      const uint8_t b = value[kvault::kHeaderBytes + 100] ^ 0x08;
      WriteAt(f.path(), kvault::kHeaderBytes + 100, &b, 1);
      damaged = f.path();
      break;
    }
  }
  ASSERT_FALSE(damaged.empty());
  auto store = OpenStore(options("d", KvCodec::kNone));
  ASSERT_TRUE(store);
  int misses = 0;
  for (const Chunk& c : chunks) {
    const std::string why = ReadAndCompare(*store, ns, c);
    if (why.find("NotFound") != std::string::npos) {
      ++misses;
      continue;
    }
    EXPECT_EQ(why, "");
  }
  EXPECT_EQ(misses, 1);
  const kvault::StoreStats st = store->Stats();
  EXPECT_EQ(st.err_corruption, 1u) << st.ToJson();
  EXPECT_EQ(st.t3_chunks_decoded, chunks.size() / 2 - 1);
}

}  // namespace
}  // namespace kvtest
