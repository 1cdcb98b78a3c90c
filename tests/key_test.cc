// Keys and namespaces (DESIGN.md §2): SHA-256 itself, the chained key formula, golden values
// that pin the derivation down, determinism across processes and namespace separation.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"

namespace kvtest {
namespace {

using kvault::ChainKey;
using kvault::ChunkKeys;
using kvault::ChunkSpan;
using kvault::Digest;
using kvault::DType;
using kvault::RopeMode;

// The namespace and tokens of the golden values below.
Namespace GoldenNamespace() {
  return Namespace("golden-tenant", kvault::Sha256("golden-model"),
                   MakeLayout(DType::kBF16, 32, 8, 128, 16, RopeMode::kPreRope));
}
std::vector<uint32_t> GoldenTokens() {
  std::vector<uint32_t> t(40);
  for (uint32_t i = 0; i < t.size(); ++i) t[i] = 1000 + 7 * i;
  return t;
}

// Golden hex values, computed once (and cross-checked with an independent Python hashlib
// implementation of the documented formula). If one of these changes, every key ever stored changes:
// existing caches become unreachable. Change them only together with a format version bump.
constexpr char kGoldenNamespaceId[] = "15af5e5a10e61be098c2d7dd32839b1712b223d67c522bded91f017ad3689fbb";
constexpr char kGoldenKey0[] = "05ba3c1c28e3a282db72b00b93aee6de6e23358e7d66b1ec17df134e03bf02e8";
constexpr char kGoldenKey2[] = "3bed41c57219d214fee28852b6897f472963d340f20e6fb86a528a5ee25a808a";

// Proves Sha256 is SHA-256: the FIPS 180-2 test vectors for "abc" and "".
TEST(Sha256, KnownVectors) {
  EXPECT_EQ(kvault::Sha256("abc").Hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(kvault::Sha256("").Hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(kvault::Sha256("abc").ShortHex(), "ba7816bf8f01");
}

// Proves ChainKey is exactly SHA-256(parent || namespace id || tokens as little-endian u32),
// computed here independently from the bytes.
TEST(ChainKey, MatchesDocumentedFormula) {
  Namespace ns = GoldenNamespace();
  std::vector<uint32_t> tokens = GoldenTokens();
  Digest parent = kvault::Sha256("some parent");
  std::vector<std::byte> buf;
  auto append = [&](const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) buf.push_back(static_cast<std::byte>(p[i]));
  };
  append(parent.bytes.data(), 32);
  append(ns.id().bytes.data(), 32);
  for (uint32_t t : std::span(tokens).first(16)) {
    uint8_t le[4] = {uint8_t(t), uint8_t(t >> 8), uint8_t(t >> 16), uint8_t(t >> 24)};
    append(le, 4);
  }
  EXPECT_EQ(ChainKey(ns, parent, std::span(tokens).first(16)), kvault::Sha256(buf));
}

// Proves the derivation is stable: a fixed namespace and token stream give these exact keys.
TEST(ChainKey, GoldenValues) {
  Namespace ns = GoldenNamespace();
  std::vector<uint32_t> tokens = GoldenTokens();
  std::vector<ChunkSpan> spans = ChunkKeys(ns, tokens);
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(ns.id().Hex(), kGoldenNamespaceId);
  EXPECT_EQ(spans[0].key.Hex(), kGoldenKey0);
  EXPECT_EQ(spans[2].key.Hex(), kGoldenKey2);
}

// Proves there is no per-process seed: a forked child computes the same keys as the parent.
TEST(ChainKey, SameInAnotherProcess) {
  auto compute = [] {
    Namespace ns = GoldenNamespace();
    std::vector<uint32_t> tokens = GoldenTokens();
    std::string out = ns.id().Hex();
    for (const ChunkSpan& s : ChunkKeys(ns, tokens)) out += s.key.Hex();
    return out;
  };
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    std::string s = compute();
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = write(fds[1], s.data() + off, s.size() - off);
      if (n <= 0) _exit(2);
      off += static_cast<size_t>(n);
    }
    _exit(0);
  }
  close(fds[1]);
  std::string child;
  char buf[256];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) child.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(child, compute());
  EXPECT_EQ(child.size(), 4u * 64);
}

// Proves namespace separation: changing any one of tenant, model fingerprint, dtype,
// chunk_tokens, rope mode, layers, kv heads or head dim changes the namespace id and the
// key of the same tokens after the same parent.
TEST(Namespace, EveryFieldSeparates) {
  const KvLayout base = MakeLayout(DType::kBF16, 4, 2, 32, 16, RopeMode::kPostRope);
  const Namespace ref("tenant", kvault::Sha256("model"), base);
  std::vector<Namespace> others;
  others.emplace_back("tenant2", kvault::Sha256("model"), base);
  others.emplace_back("", kvault::Sha256("model"), base);
  others.emplace_back("tenant", kvault::Sha256("model2"), base);
  for (DType d : {DType::kF32, DType::kF16, DType::kF8}) {
    KvLayout l = base;
    l.dtype = d;
    others.emplace_back("tenant", kvault::Sha256("model"), l);
  }
  KvLayout l = base;
  l.chunk_tokens = 32;
  others.emplace_back("tenant", kvault::Sha256("model"), l);
  l = base;
  l.rope = RopeMode::kPreRope;
  others.emplace_back("tenant", kvault::Sha256("model"), l);
  l = base;
  l.num_layers = 5;
  others.emplace_back("tenant", kvault::Sha256("model"), l);
  l = base;
  l.num_kv_heads = 4;
  others.emplace_back("tenant", kvault::Sha256("model"), l);
  l = base;
  l.head_dim = 64;
  others.emplace_back("tenant", kvault::Sha256("model"), l);

  std::vector<uint32_t> tokens = MakeTokens(1, 16);
  const kvault::ChunkKey ref_key = ChainKey(ref, ref.id(), tokens);
  std::vector<std::string> seen = {ref.id().Hex(), ref_key.Hex()};
  for (const Namespace& ns : others) {
    SCOPED_TRACE("tenant=" + ns.tenant() + " " + ns.layout().ToString());
    EXPECT_NE(ns.id(), ref.id());
    // Same parent bytes on purpose: only the namespace id differs in the hash input.
    EXPECT_NE(ChainKey(ns, ref.id(), tokens), ref_key);
    EXPECT_NE(ChainKey(ns, ns.id(), tokens), ref_key);
    seen.push_back(ns.id().Hex());
  }
  // All namespace ids are pairwise distinct too.
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::adjacent_find(seen.begin(), seen.end()), seen.end());
  // And the same namespace built twice has the same id (no hidden state).
  EXPECT_EQ(Namespace("tenant", kvault::Sha256("model"), base).id(), ref.id());
}

// Proves the tenant string is length-prefixed: ("ab", model) and ("a", model') with bytes
// shifted cannot collide by concatenation.
TEST(Namespace, TenantIsLengthPrefixed) {
  const KvLayout l = MakeLayout();
  EXPECT_NE(Namespace("ab", kvault::Sha256("m"), l).id(), Namespace("a", kvault::Sha256("m"), l).id());
}

// Proves ChunkKeys cuts streams into chunk_tokens pieces, chains the keys, keeps or drops the
// trailing partial chunk on request, and that a key depends on the whole prefix.
TEST(ChunkKeys, ChainsAndPartialChunk) {
  Namespace ns = MakeNamespace(MakeLayout(DType::kBF16, 4, 2, 32, 16));
  std::vector<uint32_t> tokens = MakeTokens(7, 40);  // 2 full chunks + 8 tokens
  std::vector<ChunkSpan> spans = ChunkKeys(ns, tokens);
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(spans[0].parent, ns.id());
  EXPECT_EQ(spans[0].begin, 0u);
  EXPECT_EQ(spans[0].tokens, 16u);
  EXPECT_EQ(spans[1].parent, spans[0].key);
  EXPECT_EQ(spans[1].begin, 16u);
  EXPECT_EQ(spans[2].parent, spans[1].key);
  EXPECT_EQ(spans[2].begin, 32u);
  EXPECT_EQ(spans[2].tokens, 8u);
  for (const ChunkSpan& s : spans) {
    EXPECT_EQ(s.key, ChainKey(ns, s.parent, std::span(tokens).subspan(s.begin, s.tokens)));
  }

  std::vector<ChunkSpan> whole = ChunkKeys(ns, tokens, /*include_partial=*/false);
  ASSERT_EQ(whole.size(), 2u);
  EXPECT_EQ(whole[0].key, spans[0].key);
  EXPECT_EQ(whole[1].key, spans[1].key);

  // Exactly whole chunks: no partial either way.
  EXPECT_EQ(ChunkKeys(ns, std::span(tokens).first(32)).size(), 2u);
  EXPECT_TRUE(ChunkKeys(ns, std::span(tokens).first(0)).empty());
  ASSERT_EQ(ChunkKeys(ns, std::span(tokens).first(5)).size(), 1u);
  EXPECT_TRUE(ChunkKeys(ns, std::span(tokens).first(5), false).empty());

  // A partial chunk's key differs from the full chunk with the same first tokens.
  std::vector<uint32_t> longer = tokens;
  longer.resize(48, 9);
  std::vector<ChunkSpan> full = ChunkKeys(ns, longer);
  ASSERT_EQ(full.size(), 3u);
  EXPECT_EQ(full[1].key, spans[1].key);
  EXPECT_NE(full[2].key, spans[2].key);

  // Changing one token in chunk 0 changes every later key (chaining).
  std::vector<uint32_t> changed = tokens;
  changed[3] ^= 1;
  std::vector<ChunkSpan> c = ChunkKeys(ns, changed);
  for (size_t i = 0; i < 3; ++i) EXPECT_NE(c[i].key, spans[i].key) << i;
  // Changing a token in chunk 1 leaves chunk 0's key alone.
  changed = tokens;
  changed[20] ^= 1;
  c = ChunkKeys(ns, changed);
  EXPECT_EQ(c[0].key, spans[0].key);
  EXPECT_NE(c[1].key, spans[1].key);
}

// Proves Digest::Hex is lowercase, 64 characters, byte order preserved.
TEST(Digest, Hex) {
  Digest d;
  d.bytes[0] = 0xab;
  d.bytes[31] = 0x01;
  EXPECT_TRUE(Digest{}.IsZero());
  EXPECT_FALSE(d.IsZero());
  EXPECT_EQ(d.Hex(), "ab" + std::string(60, '0') + "01");
}

}  // namespace
}  // namespace kvtest
