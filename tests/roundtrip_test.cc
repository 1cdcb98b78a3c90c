// Round trips through one store: Put / BeginPut+WriteLayer, Lookup, OpenChunk, ReadLayer,
// ReadRange; prefix sharing, partial chunks, tiers, isolation and the lookup counters.
#include <cstring>
#include <thread>

#include <gtest/gtest.h>

#include "stats_checks.h"
#include "store/inspect.h"
#include "test_util.h"

namespace kvtest {
namespace {

using kvault::Code;
using kvault::DType;
using kvault::LookupResult;
using kvault::Tier;

std::unique_ptr<Store> OpenStore(const kvault::StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s.value()) : nullptr;
}

// Proves every dtype and a few shapes (odd sizes included, so payloads are not multiples of
// a page or a block) round-trip byte for byte: whole chunks, a trailing partial chunk, every
// layer, arbitrary sub-ranges; and that malformed calls are refused, not served.
TEST(RoundTrip, EveryDtypeAndShape) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(dir.path()));
  ASSERT_TRUE(store);
  struct Shape {
    uint32_t layers, heads, dim, chunk;
  };
  const Shape shapes[] = {{1, 1, 8, 4}, {4, 2, 32, 16}, {3, 3, 24, 7}, {2, 1, 1, 1}};
  uint64_t seed = 1;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8}) {
    for (const Shape& sh : shapes) {
      const KvLayout layout = MakeLayout(dtype, sh.layers, sh.heads, sh.dim, sh.chunk);
      SCOPED_TRACE(layout.ToString());
      const Namespace ns = MakeNamespace(layout);
      // Two full chunks and a partial one (when a chunk holds more than one token).
      const size_t n = 2 * sh.chunk + (sh.chunk > 1 ? sh.chunk / 2 + 1 : 0);
      std::vector<uint32_t> tokens = MakeTokens(seed++, n);
      std::vector<kvault::ChunkSpan> spans;
      ASSERT_TRUE(PutChain(*store, ns, tokens, &spans).ok());
      for (const auto& s : spans) {
        std::string why;
        EXPECT_EQ(CheckChunk(*store, ns, s.key, s.tokens, nullptr, &why), Check::kMatch) << why;
      }
      LookupResult r = store->Lookup(ns, tokens);
      EXPECT_EQ(r.cached_tokens, n);
      EXPECT_EQ(r.total_tokens, n);
      ASSERT_EQ(r.chunks.size(), spans.size());

      // An arbitrary sub-range of the last chunk, and the refusals.
      auto reader = store->OpenChunk(ns, spans.back().key);
      ASSERT_TRUE(reader.ok());
      const std::vector<std::byte> want = PayloadFor(spans.back().key, reader->size());
      if (reader->size() > 3) {
        std::vector<std::byte> mid(reader->size() - 3);
        ASSERT_TRUE(reader->ReadRange(1, mid).ok());
        EXPECT_EQ(0, std::memcmp(mid.data(), want.data() + 1, mid.size()));
      }
      std::vector<std::byte> big(reader->size() + 1);
      EXPECT_EQ(reader->ReadRange(0, big).code(), Code::kInvalidArgument);
      std::vector<std::byte> one(1);
      EXPECT_EQ(reader->ReadRange(reader->size(), one).code(), Code::kInvalidArgument);
      EXPECT_EQ(reader->ReadLayer(sh.layers, std::span(big).first(layout.layer_range(0, reader->tokens()).size)).code(),
                Code::kInvalidArgument);
      EXPECT_EQ(reader->ReadLayer(0, big).code(), Code::kInvalidArgument);
    }
  }
  ExpectLookupCountersAddUp(store->Stats());
}

// Proves malformed puts are refused: wrong payload size, no tokens, too many tokens, an
// invalid layout.
TEST(RoundTrip, RejectsMalformedPuts) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(dir.path()));
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(MakeLayout());
  std::vector<uint32_t> tokens = MakeTokens(1, 17);
  std::vector<std::byte> payload(ns.layout().chunk_bytes(16) + 1);
  EXPECT_EQ(store->Put(ns, ns.id(), std::span(tokens).first(16), payload).code(), Code::kInvalidArgument);
  EXPECT_EQ(store->BeginPut(ns, ns.id(), std::span(tokens).first(0)).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(store->BeginPut(ns, ns.id(), tokens).status().code(), Code::kInvalidArgument);
  const Namespace bad = MakeNamespace(MakeLayout(DType::kBF16, 0, 2, 32, 16));
  EXPECT_EQ(store->BeginPut(bad, bad.id(), std::span(tokens).first(4)).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(store->Stats().puts, 0u);
  EXPECT_EQ(store->Stats().t1_used_bytes, 0u);
}

// Proves a chunk written layer by layer (in any order) through a ChunkWriter is the same
// chunk, byte for byte and on disk, as one whole-payload Put.
TEST(RoundTrip, PerLayerWritesEqualWholePut) {
  TempDir dir_a, dir_b;
  const Namespace ns = MakeNamespace(MakeLayout(DType::kF16, 5, 2, 24, 16));
  const KvLayout& layout = ns.layout();
  std::vector<uint32_t> tokens = MakeTokens(42, 16 * 3 + 5);
  std::vector<kvault::ChunkSpan> spans = kvault::ChunkKeys(ns, tokens);
  {
    auto a = OpenStore(SmallOptions(dir_a.path()));
    auto b = OpenStore(SmallOptions(dir_b.path()));
    ASSERT_TRUE(a && b);
    ASSERT_TRUE(PutChain(*a, ns, tokens).ok());
    for (const auto& s : spans) {
      const std::vector<std::byte> payload = PayloadFor(s.key, layout.chunk_bytes(s.tokens));
      auto w = b->BeginPut(ns, s.parent, std::span(tokens).subspan(s.begin, s.tokens));
      ASSERT_TRUE(w.ok()) << w.status().ToString();
      EXPECT_FALSE(w->exists());
      EXPECT_EQ(w->key(), s.key);
      EXPECT_EQ(w->tokens(), s.tokens);
      for (uint32_t l = layout.num_layers; l-- > 0;) {  // last layer first
        kvault::ByteRange r = layout.layer_range(l, s.tokens);
        ASSERT_TRUE(w->WriteLayer(l, std::span(payload).subspan(r.offset, r.size)).ok());
      }
      // Invisible until committed.
      EXPECT_EQ(b->OpenChunk(ns, s.key).status().code(), Code::kNotFound);
      EXPECT_EQ(b->Lookup(ns, std::span(tokens).first(s.begin + s.tokens)).cached_tokens, s.begin);
      ASSERT_TRUE(w->Commit().ok());
      EXPECT_EQ(w->Commit().code(), Code::kInvalidArgument);  // once only
      EXPECT_FALSE(w->WriteLayer(0, std::span(payload).first(layout.layer_range(0, s.tokens).size)).ok());
    }
    for (Store* s : {a.get(), b.get()}) {
      for (const auto& sp : spans) EXPECT_EQ(CheckChunk(*s, ns, sp.key, sp.tokens), Check::kMatch);
      ASSERT_TRUE(s->Flush().ok());
    }
  }
  // Same records on disk: same keys, sizes and payload checksums.
  auto ra = kvault::InspectDir(dir_a.path());
  auto rb = kvault::InspectDir(dir_b.path());
  ASSERT_TRUE(ra.ok() && rb.ok());
  ASSERT_EQ(ra->records.size(), spans.size());
  ASSERT_EQ(rb->records.size(), spans.size());
  EXPECT_TRUE(ra->clean() && rb->clean());
  for (size_t i = 0; i < spans.size(); ++i) {
    EXPECT_EQ(ra->records[i].header.key, rb->records[i].header.key);
    EXPECT_EQ(ra->records[i].header.payload_bytes, rb->records[i].header.payload_bytes);
    EXPECT_EQ(ra->records[i].header.payload_checksum, rb->records[i].header.payload_checksum);
  }
  // And reopened, both serve the derived bytes from T2.
  auto b = OpenStore(SmallOptions(dir_b.path()));
  ASSERT_TRUE(b);
  for (const auto& sp : spans) {
    Tier from = Tier::kNone;
    EXPECT_EQ(CheckChunk(*b, ns, sp.key, sp.tokens, &from), Check::kMatch);
    EXPECT_EQ(from, Tier::kT2);
  }
}

// Proves every way of filling a chunk writes the right bytes *and the right checksum* to T2:
// in order, in reverse, with gaps filled later, in odd-sized ranges, and with bytes written
// twice (garbage first, then the real data). A wrong checksum would make the chunk a miss
// (a corruption) when it is read back from T2 after a restart.
TEST(RoundTrip, EveryWriteOrderPersistsTheRightChecksum) {
  TempDir dir;
  const Namespace ns = MakeNamespace(MakeLayout(kvault::DType::kBF16, 4, 2, 32, 16));
  const KvLayout& layout = ns.layout();
  const std::vector<uint32_t> tokens = MakeTokens(77, 16 * 7 + 9);
  const std::vector<kvault::ChunkSpan> spans = kvault::ChunkKeys(ns, tokens);
  ASSERT_EQ(spans.size(), 8u);
  {
    auto store = OpenStore(SmallOptions(dir.path()));
    ASSERT_TRUE(store);
    for (size_t i = 0; i < spans.size(); ++i) {
      const auto& s = spans[i];
      const std::vector<std::byte> p = PayloadFor(s.key, layout.chunk_bytes(s.tokens));
      const std::vector<std::byte> junk = PayloadFor(kvault::Sha256("junk"), p.size());
      auto layer = [&](uint32_t l) {
        kvault::ByteRange r = layout.layer_range(l, s.tokens);
        return std::span(p).subspan(r.offset, r.size);
      };
      auto w = store->BeginPut(ns, s.parent, std::span(tokens).subspan(s.begin, s.tokens));
      ASSERT_TRUE(w.ok());
      switch (i) {
        case 0:  // layers in order
          for (uint32_t l = 0; l < 4; ++l) ASSERT_TRUE(w->WriteLayer(l, layer(l)).ok());
          break;
        case 1:  // reverse
          for (uint32_t l = 4; l-- > 0;) ASSERT_TRUE(w->WriteLayer(l, layer(l)).ok());
          break;
        case 2:  // 0, 2, 1, 3
          for (uint32_t l : {0u, 2u, 1u, 3u}) ASSERT_TRUE(w->WriteLayer(l, layer(l)).ok());
          break;
        case 3:  // 0, 2, then 2 again with other bytes before the real ones, 1, 3
          ASSERT_TRUE(w->WriteLayer(0, layer(0)).ok());
          ASSERT_TRUE(w->WriteLayer(2, std::span(junk).first(layer(2).size())).ok());
          ASSERT_TRUE(w->WriteLayer(2, layer(2)).ok());
          ASSERT_TRUE(w->WriteLayer(1, layer(1)).ok());
          ASSERT_TRUE(w->WriteLayer(3, layer(3)).ok());
          break;
        case 4:  // odd-sized ranges in order
          for (size_t off = 0; off < p.size(); off += 1000) {
            const size_t n = std::min<size_t>(1000, p.size() - off);
            ASSERT_TRUE(w->WriteRange(off, std::span(p).subspan(off, n)).ok());
          }
          break;
        case 5:  // garbage everywhere, then the real payload
          ASSERT_TRUE(w->WriteRange(0, junk).ok());
          ASSERT_TRUE(w->WriteRange(0, p).ok());
          break;
        case 6:  // the real payload, then a few bytes overwritten with garbage and restored
          ASSERT_TRUE(w->WriteRange(0, p).ok());
          ASSERT_TRUE(w->WriteRange(100, std::span(junk).first(50)).ok());
          ASSERT_TRUE(w->WriteRange(100, std::span(p).subspan(100, 50)).ok());
          break;
        default:  // the trailing partial chunk: second half first
          ASSERT_TRUE(w->WriteRange(p.size() / 2, std::span(p).subspan(p.size() / 2)).ok());
          ASSERT_TRUE(w->WriteRange(0, std::span(p).first(p.size() / 2)).ok());
          break;
      }
      ASSERT_TRUE(w->Commit().ok());
      EXPECT_EQ(CheckChunk(*store, ns, s.key, s.tokens), Check::kMatch) << "case " << i;
    }
    ASSERT_TRUE(store->Flush().ok());
  }
  auto store = OpenStore(SmallOptions(dir.path()));
  ASSERT_TRUE(store);
  for (size_t i = 0; i < spans.size(); ++i) {
    Tier from = Tier::kNone;
    std::string why;
    EXPECT_EQ(CheckChunk(*store, ns, spans[i].key, spans[i].tokens, &from, &why), Check::kMatch)
        << "case " << i << ": " << why;
    EXPECT_EQ(from, Tier::kT2);
  }
  EXPECT_EQ(store->Stats().err_corruption, 0u);
}

// Proves a ChunkWriter dropped without Commit leaves nothing behind: no entry, no T1 pages;
// and a put of a chunk the store holds is reported as existing and deduplicated.
TEST(RoundTrip, AbortedWriterLeavesNothingAndDuplicatesAreSkipped) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(dir.path()));
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(MakeLayout());
  std::vector<uint32_t> tokens = MakeTokens(3, 16);
  {
    auto w = store->BeginPut(ns, ns.id(), tokens);
    ASSERT_TRUE(w.ok());
    EXPECT_GT(store->Stats().t1_used_bytes, 0u);
  }
  EXPECT_EQ(store->Stats().t1_used_bytes, 0u);
  EXPECT_EQ(store->Stats().puts, 0u);
  EXPECT_EQ(store->Lookup(ns, tokens).cached_tokens, 0u);
  ASSERT_TRUE(PutChain(*store, ns, tokens).ok());
  auto again = store->BeginPut(ns, ns.id(), tokens);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->exists());
  ASSERT_TRUE(again->Commit().ok());
  ASSERT_TRUE(PutChain(*store, ns, tokens).ok());
  kvault::StoreStats st = store->Stats();
  EXPECT_EQ(st.puts, 1u);
  EXPECT_EQ(st.puts_deduplicated, 2u);
  EXPECT_EQ(st.t1_entries, 1u);
}

// Proves "put is durable in T1 on return" when two writers race for the same chunk: while
// one ChunkWriter holds it uncommitted, another put of it must not report success unless
// the chunk is then really stored; here the first writer is dropped without Commit.
TEST(RoundTrip, PutRacingAnUncommittedWriterOfTheSameChunk) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(dir.path()));
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(MakeLayout());
  const std::vector<uint32_t> tokens = MakeTokens(31, 16);
  const kvault::ChunkKey key = kvault::ChainKey(ns, ns.id(), tokens);
  const std::vector<std::byte> payload = PayloadFor(key, ns.layout().chunk_bytes(16));
  kvault::Status second;
  {
    auto first = store->BeginPut(ns, ns.id(), tokens);
    ASSERT_TRUE(first.ok());
    second = store->Put(ns, ns.id(), tokens, payload);
  }  // the first writer is dropped without Commit
  if (second.ok()) {
    EXPECT_EQ(CheckChunk(*store, ns, key, 16), Check::kMatch) << "Put returned OK but the chunk is not stored";
  } else {
    EXPECT_EQ(second.code(), Code::kResourceExhausted) << second.ToString();  // "in flight; try again"
    EXPECT_EQ(store->Lookup(ns, tokens).cached_tokens, 0u);
    ASSERT_TRUE(store->Put(ns, ns.id(), tokens, payload).ok());
    EXPECT_EQ(CheckChunk(*store, ns, key, 16), Check::kMatch);
  }
}

// Proves prefix sharing: two conversations with the same system prompt store the shared
// chunks once, and Lookup finds the longest cached prefix (trailing partial chunk included).
TEST(Lookup, SharedSystemPromptIsStoredOnce) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(dir.path()));
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(MakeLayout());  // 16 tokens per chunk
  std::vector<uint32_t> system = MakeTokens(100, 48);  // 3 chunks
  std::vector<uint32_t> a = system, b = system;
  std::vector<uint32_t> a_own = MakeTokens(101, 40), b_own = MakeTokens(102, 30);
  a.insert(a.end(), a_own.begin(), a_own.end());  // 88 tokens: 5 chunks + 8
  b.insert(b.end(), b_own.begin(), b_own.end());  // 78 tokens: 4 chunks + 14

  EXPECT_EQ(store->Lookup(ns, a).cached_tokens, 0u);
  ASSERT_TRUE(PutChain(*store, ns, a).ok());
  EXPECT_EQ(store->Stats().puts, 6u);

  LookupResult rb = store->Lookup(ns, b);
  EXPECT_EQ(rb.cached_tokens, 48u);
  ASSERT_EQ(rb.chunks.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(rb.chunks[i].begin, 16 * i);
    EXPECT_EQ(rb.chunks[i].tokens, 16u);
    EXPECT_EQ(rb.chunks[i].tier, Tier::kT1);
  }

  ASSERT_TRUE(PutChain(*store, ns, b).ok());
  kvault::StoreStats st = store->Stats();
  EXPECT_EQ(st.puts, 8u);               // b added one full chunk and one partial
  EXPECT_EQ(st.puts_deduplicated, 3u);  // the system prompt's chunks
  EXPECT_EQ(st.t1_entries, 8u);

  LookupResult ra = store->Lookup(ns, a);
  EXPECT_EQ(ra.cached_tokens, 88u);
  ASSERT_EQ(ra.chunks.size(), 6u);
  EXPECT_EQ(ra.chunks.back().begin, 80u);
  EXPECT_EQ(ra.chunks.back().tokens, 8u);
  rb = store->Lookup(ns, b);
  EXPECT_EQ(rb.cached_tokens, 78u);
  EXPECT_EQ(rb.chunks.back().tokens, 14u);

  // A third conversation diverging inside the second chunk reuses only the first.
  std::vector<uint32_t> c = system;
  c[20] ^= 0x5;
  LookupResult rc = store->Lookup(ns, c);
  EXPECT_EQ(rc.cached_tokens, 16u);
  EXPECT_EQ(rc.total_tokens, 48u);

  // Every looked-up chunk reads back intact.
  for (const auto& ch : ra.chunks) EXPECT_EQ(CheckChunk(*store, ns, ch.key, ch.tokens), Check::kMatch);

  st = store->Stats();
  ExpectLookupCountersAddUp(st);
  EXPECT_EQ(st.lookups, 5u);
  EXPECT_EQ(st.lookup_tokens, 88u + 78 + 88 + 78 + 48);
  EXPECT_EQ(st.hit_tokens_t1, 0u + 48 + 88 + 78 + 16);
  EXPECT_EQ(st.hit_tokens_t2, 0u);
  EXPECT_EQ(st.lookup_chunks, 6u + 5 + 6 + 5 + 3);
  EXPECT_EQ(st.hit_chunks_t1, 0u + 3 + 6 + 5 + 1);
}

// Proves the partial-chunk rules: a stored trailing partial chunk is returned by Lookup when
// the looked-up stream continues it; the longest matching partial wins; a partial is
// superseded (dropped) when the full chunk is put.
TEST(Lookup, PartialChunksAndSupersession) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(dir.path()));
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(MakeLayout());
  std::vector<uint32_t> t = MakeTokens(9, 32);  // two full chunks when complete

  ASSERT_TRUE(PutChain(*store, ns, std::span(t).first(21)).ok());  // chunk 0 + 5-token partial
  ASSERT_TRUE(PutChain(*store, ns, std::span(t).first(26)).ok());  // + 10-token partial
  const std::vector<kvault::ChunkSpan> p5 = kvault::ChunkKeys(ns, std::span(t).first(21));
  const std::vector<kvault::ChunkSpan> p10 = kvault::ChunkKeys(ns, std::span(t).first(26));

  LookupResult r = store->Lookup(ns, std::span(t).first(21));
  EXPECT_EQ(r.cached_tokens, 21u);
  ASSERT_EQ(r.chunks.size(), 2u);
  EXPECT_EQ(r.chunks[1].key, p5[1].key);
  r = store->Lookup(ns, std::span(t).first(24));  // continues the 5-token partial only
  EXPECT_EQ(r.cached_tokens, 21u);
  r = store->Lookup(ns, std::span(t).first(30));  // both match: the longest wins
  EXPECT_EQ(r.cached_tokens, 26u);
  ASSERT_EQ(r.chunks.size(), 2u);
  EXPECT_EQ(r.chunks[1].key, p10[1].key);
  EXPECT_EQ(r.chunks[1].tokens, 10u);
  EXPECT_EQ(r.chunks[1].begin, 16u);
  // A stream that differs inside the partial's tokens does not match it.
  std::vector<uint32_t> other(t.begin(), t.begin() + 30);
  other[18] ^= 1;
  EXPECT_EQ(store->Lookup(ns, other).cached_tokens, 16u);
  EXPECT_EQ(CheckChunk(*store, ns, p10[1].key, 10), Check::kMatch);

  // The full chunk supersedes both partials. (Supersession skips a partial that is pinned
  // or in flight to T2 at that moment; Flush first so that the write-behind is idle.)
  ASSERT_TRUE(store->Flush().ok());
  ASSERT_TRUE(PutChain(*store, ns, t).ok());
  kvault::StoreStats st = store->Stats();
  EXPECT_EQ(st.partials_superseded, 2u);
  EXPECT_EQ(st.t1_entries, 2u);
  EXPECT_EQ(store->OpenChunk(ns, p5[1].key).status().code(), Code::kNotFound);
  EXPECT_EQ(store->OpenChunk(ns, p10[1].key).status().code(), Code::kNotFound);
  r = store->Lookup(ns, t);
  EXPECT_EQ(r.cached_tokens, 32u);
  EXPECT_EQ(r.chunks.back().tokens, 16u);
  ExpectLookupCountersAddUp(store->Stats());
}

// Proves T2 serves what T1 evicted: with room for 4 chunks in DRAM, a flushed 10-chunk chain
// is found partly on T2 by Lookup, read back byte-identical from T2 (served_from == T2,
// counted as a promotion) and then lives in T1 again.
TEST(Tiers, ServedFromT2AfterEvictionAndPromotedBack) {
  TempDir dir;
  kvault::StoreOptions o = SmallOptions(dir.path());
  o.t1_bytes = 4 * o.page_bytes;  // 4 chunks of 16 KiB
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(MakeLayout());
  ASSERT_EQ(ns.layout().chunk_bytes(16), o.page_bytes);
  std::vector<uint32_t> tokens = MakeTokens(5, 160);
  const std::vector<kvault::ChunkSpan> spans = kvault::ChunkKeys(ns, tokens);
  for (size_t i = 0; i < spans.size(); ++i) {  // one at a time so nothing is dropped unwritten
    ASSERT_TRUE(PutChain(*store, ns, std::span(tokens).first(16 * (i + 1))).ok());
    ASSERT_TRUE(store->Flush().ok());
  }
  kvault::StoreStats st = store->Stats();
  EXPECT_EQ(st.t1_dropped_unpersisted, 0u);
  EXPECT_EQ(st.t1_evictions, 6u);
  EXPECT_EQ(st.t1_entries, 4u);
  EXPECT_EQ(st.t2_entries, 10u);
  EXPECT_EQ(st.bytes_t1_to_t2, 10u * o.page_bytes);

  LookupResult r = store->Lookup(ns, tokens);
  EXPECT_EQ(r.cached_tokens, 160u);
  ASSERT_EQ(r.chunks.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(r.chunks[i].tier, i < 6 ? Tier::kT2 : Tier::kT1) << i;
  st = store->Stats();
  EXPECT_EQ(st.hit_chunks_t2, 6u);
  EXPECT_EQ(st.hit_tokens_t2, 96u);
  EXPECT_EQ(st.hit_chunks_t1, 4u);

  Tier from = Tier::kNone;
  EXPECT_EQ(CheckChunk(*store, ns, spans[0].key, 16, &from), Check::kMatch);
  EXPECT_EQ(from, Tier::kT2);
  st = store->Stats();
  EXPECT_EQ(st.promotions, 1u);
  EXPECT_EQ(st.bytes_t2_to_t1, o.page_bytes);
  r = store->Lookup(ns, std::span(tokens).first(16));
  ASSERT_EQ(r.chunks.size(), 1u);
  EXPECT_EQ(r.chunks[0].tier, Tier::kT1);
  EXPECT_EQ(CheckChunk(*store, ns, spans[0].key, 16, &from), Check::kMatch);
  EXPECT_EQ(from, Tier::kT1);

  // Walk the whole chain twice: every chunk identical wherever it is served from.
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& s : spans) EXPECT_EQ(CheckChunk(*store, ns, s.key, s.tokens), Check::kMatch);
  }
  st = store->Stats();
  EXPECT_GE(st.promotions, 6u);
  ExpectLookupCountersAddUp(st);
  ExpectWithinCaps(st);
}

// Proves a chunk pinned by a ChunkReader keeps its bytes while the store evicts everything
// around it, and that when every page is pinned a put fails fast (kResourceExhausted)
// instead of waiting or evicting pinned data, then succeeds once the pins are gone.
TEST(Tiers, PinnedChunksAreNeverEvicted) {
  TempDir dir;
  kvault::StoreOptions o = SmallOptions(dir.path());
  o.t1_bytes = 3 * o.page_bytes;
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(MakeLayout());
  std::vector<uint32_t> tokens = MakeTokens(21, 16 * 20);
  const auto spans = kvault::ChunkKeys(ns, tokens);
  ASSERT_TRUE(PutChain(*store, ns, std::span(tokens).first(16)).ok());
  auto held = store->OpenChunk(ns, spans[0].key);
  ASSERT_TRUE(held.ok());
  for (size_t i = 1; i < spans.size(); ++i) {  // 19 more chunks through the 2 free pages
    ASSERT_TRUE(PutChain(*store, ns, std::span(tokens).first(16 * (i + 1))).ok()) << i;
    ASSERT_TRUE(store->Flush().ok());  // written behind before the next one evicts it
  }
  const std::vector<std::byte> want = PayloadFor(spans[0].key, held->size());
  std::vector<std::byte> got(held->size());
  ASSERT_TRUE(held->ReadRange(0, got).ok());
  EXPECT_EQ(got, want);

  auto second = store->OpenChunk(ns, spans[19].key);
  auto third = store->OpenChunk(ns, spans[18].key);
  ASSERT_TRUE(second.ok() && third.ok());
  std::vector<uint32_t> other = MakeTokens(22, 16);
  EXPECT_EQ(store->Put(ns, ns.id(), other, PayloadFor(ChainKey(ns, ns.id(), other), o.page_bytes)).code(),
            Code::kResourceExhausted);
  EXPECT_EQ(store->OpenChunk(ns, spans[5].key).status().code(), Code::kResourceExhausted);  // on T2 only
  third = kvault::ChunkReader();  // unpin one
  EXPECT_TRUE(PutChain(*store, ns, other).ok());
  EXPECT_EQ(CheckChunk(*store, ns, spans[19].key, 16), Check::kMatch);
  ASSERT_TRUE(held->ReadRange(0, got).ok());
  EXPECT_EQ(got, want);
  ExpectWithinCaps(store->Stats());
}

// Proves Open refuses options it cannot honour, and a chunk larger than the whole DRAM tier
// is refused with kNoSpace.
TEST(RoundTrip, BadOptionsAndOversizedChunks) {
  TempDir dir;
  auto bad = [&](auto mutate) {
    kvault::StoreOptions o = SmallOptions(dir.path());
    mutate(o);
    return Store::Open(o).status().code();
  };
  EXPECT_EQ(bad([](kvault::StoreOptions& o) { o.page_bytes = 1000; }), Code::kInvalidArgument);
  EXPECT_EQ(bad([](kvault::StoreOptions& o) { o.page_bytes = 0; }), Code::kInvalidArgument);
  EXPECT_EQ(bad([](kvault::StoreOptions& o) { o.segment_bytes = 4096; }), Code::kInvalidArgument);
  EXPECT_EQ(bad([](kvault::StoreOptions& o) { o.t1_bytes = 4096; }), Code::kInvalidArgument);
  EXPECT_EQ(bad([](kvault::StoreOptions& o) { o.policy = "no-such-policy"; }), Code::kInvalidArgument);

  kvault::StoreOptions o = SmallOptions(dir.path());
  o.t1_bytes = 2 * o.page_bytes;
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  const Namespace big = MakeNamespace(MakeLayout(DType::kF32, 4, 2, 32, 64));  // 128 KiB chunks
  std::vector<uint32_t> tokens = MakeTokens(1, 64);
  EXPECT_EQ(store->BeginPut(big, big.id(), tokens).status().code(), Code::kNoSpace);
  EXPECT_EQ(store->Stats().t1_used_bytes, 0u);
}

// Proves that with T2 off (t2_bytes = 0) the store is a DRAM cache: Flush succeeds, nothing
// is written to the directory, and an evicted chunk is a plain miss.
TEST(Tiers, DramOnlyStore) {
  TempDir dir;
  kvault::StoreOptions o = SmallOptions(dir.Sub("store"));
  o.t2_bytes = 0;
  o.t1_bytes = 2 * o.page_bytes;
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  const Namespace ns = MakeNamespace(MakeLayout());
  std::vector<uint32_t> tokens = MakeTokens(6, 48);
  std::vector<kvault::ChunkSpan> spans;
  ASSERT_TRUE(PutChain(*store, ns, tokens, &spans).ok());
  EXPECT_TRUE(store->Flush().ok());
  EXPECT_EQ(store->OpenChunk(ns, spans[0].key).status().code(), Code::kNotFound);
  EXPECT_EQ(CheckChunk(*store, ns, spans[2].key, 16), Check::kMatch);
  EXPECT_EQ(store->Lookup(ns, tokens).cached_tokens, 0u);  // the chain's head is gone
  kvault::StoreStats st = store->Stats();
  EXPECT_EQ(st.t2_capacity_bytes, 0u);
  EXPECT_EQ(st.t2_entries, 0u);
  EXPECT_EQ(DirBytes(dir.Sub("store")), 0u);
}

// Proves tenant isolation: the same tokens under another tenant (or model) never hit, and a
// key of one namespace cannot be opened through another.
TEST(Isolation, NamespacesNeverShareEntries) {
  TempDir dir;
  auto store = OpenStore(SmallOptions(dir.path()));
  ASSERT_TRUE(store);
  const KvLayout layout = MakeLayout();
  const Namespace a = MakeNamespace(layout, "tenant-a");
  const Namespace b = MakeNamespace(layout, "tenant-b");
  const Namespace m = MakeNamespace(layout, "tenant-a", "model-b");
  std::vector<uint32_t> tokens = MakeTokens(11, 40);
  std::vector<kvault::ChunkSpan> spans;
  ASSERT_TRUE(PutChain(*store, a, tokens, &spans).ok());
  EXPECT_EQ(store->Lookup(a, tokens).cached_tokens, 40u);
  EXPECT_EQ(store->Lookup(b, tokens).cached_tokens, 0u);
  EXPECT_EQ(store->Lookup(m, tokens).cached_tokens, 0u);
  for (const auto& s : spans) {
    EXPECT_EQ(store->OpenChunk(b, s.key).status().code(), Code::kNotFound);
    EXPECT_EQ(store->OpenChunk(m, s.key).status().code(), Code::kNotFound);
  }
}

// Proves a store whose DRAM tier is faulted in at open (prefault_t1) stores and serves
// chunks like any other, from T1 and, after a reopen, from T2.
TEST(RoundTrip, PrefaultedDramServesChunks) {
  TempDir dir;
  kvault::StoreOptions o = SmallOptions(dir.path());
  o.prefault_t1 = true;
  const Namespace ns = MakeNamespace(MakeLayout());
  std::vector<uint32_t> tokens = MakeTokens(7, 40);
  std::vector<kvault::ChunkSpan> spans;
  {
    auto store = OpenStore(o);
    ASSERT_TRUE(store);
    ASSERT_TRUE(PutChain(*store, ns, tokens, &spans).ok());
    for (const auto& s : spans) EXPECT_EQ(CheckChunk(*store, ns, s.key, s.tokens), Check::kMatch);
    ASSERT_TRUE(store->Flush().ok());
  }
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  Tier from = Tier::kNone;
  for (const auto& s : spans) EXPECT_EQ(CheckChunk(*store, ns, s.key, s.tokens, &from), Check::kMatch);
  EXPECT_EQ(from, Tier::kT2);
}

// Proves a chunk is published only when every payload byte was written: committing a writer
// with holes fails and stores nothing, so a reused DRAM page's stale bytes (here another
// tenant's chunk) can never be served under a new key.
TEST(RoundTrip, CommitWithUnwrittenBytesIsRefused) {
  TempDir dir;
  kvault::StoreOptions o = SmallOptions(dir.path());
  o.t2_bytes = 0;
  auto store = OpenStore(o);
  ASSERT_TRUE(store);
  const KvLayout layout = MakeLayout();
  const Namespace a = MakeNamespace(layout, "tenant-a");
  const Namespace b = MakeNamespace(layout, "tenant-b");
  std::vector<uint32_t> tokens = MakeTokens(5, 16);
  ASSERT_TRUE(PutChain(*store, a, tokens).ok());
  std::vector<uint32_t> other = MakeTokens(6, 16);
  {
    auto w = store->BeginPut(b, b.id(), other);
    ASSERT_TRUE(w.ok());
    EXPECT_EQ(w->Commit().code(), Code::kInvalidArgument);  // nothing written
  }
  {
    auto w = store->BeginPut(b, b.id(), other);
    ASSERT_TRUE(w.ok());
    const size_t n = layout.chunk_bytes(16);
    std::vector<std::byte> half(n / 2, std::byte{1});
    ASSERT_TRUE(w->WriteRange(0, half).ok());
    ASSERT_TRUE(w->WriteRange(n - n / 4, std::span(half).first(n / 4)).ok());
    EXPECT_EQ(w->Commit().code(), Code::kInvalidArgument);  // a hole in the middle
  }
  EXPECT_EQ(store->Lookup(b, other).cached_tokens, 0u);
  EXPECT_EQ(store->OpenChunk(b, kvault::ChainKey(b, b.id(), other)).status().code(), Code::kNotFound);
  EXPECT_EQ(store->Lookup(a, tokens).cached_tokens, 16u);
}

}  // namespace
}  // namespace kvtest
