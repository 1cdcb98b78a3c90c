// The kvaultd protocol fuzz target (daemon_protocol_fuzz.h) under a deterministic mutator:
// a fixed seed, the seed corpus of valid frames, byte/bit/integer/splice/type mutations, and
// a pool of mutants that decoded (so mutations build on each other), bounded in time for CI.
// Then the same mutants written to a live in-process daemon's socket: it answers or closes
// each connection and keeps serving a normal client, which checks every byte it loads.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <random>

#include "daemon/daemon.h"
#include "daemon/protocol.h"
#include "daemon/socket_io.h"
#include "daemon_protocol_fuzz.h"
#include "kvault/client.h"
#include "test_util.h"

namespace kvault {
namespace {

using Bytes = std::vector<uint8_t>;
using Clock = std::chrono::steady_clock;

// Deterministic frame mutations. Header fields are kept consistent with the payload most of
// the time, so most mutants reach a decoder as a well-formed frame.
class FrameMutator {
 public:
  explicit FrameMutator(uint64_t seed) : rng_(seed) {}

  Bytes Mutate(const Bytes& input, const std::vector<Bytes>& pool) {
    Bytes f = input;
    const int n = 1 + static_cast<int>(rng_() % 4);
    for (int i = 0; i < n; ++i) MutateOnce(f, pool);
    if (rng_() % 10 != 0 && f.size() >= wire::kFrameHeaderBytes) SetPayloadBytes(f);
    return f;
  }

 private:
  size_t Pick(size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng_() % n); }
  // A position in the payload when there is one (decoders are deep there), else anywhere.
  size_t Pos(const Bytes& f) {
    if (f.size() > wire::kFrameHeaderBytes && rng_() % 8 != 0) {
      return wire::kFrameHeaderBytes + Pick(f.size() - wire::kFrameHeaderBytes);
    }
    return Pick(f.size());
  }
  static void SetPayloadBytes(Bytes& f) {
    const uint32_t n = static_cast<uint32_t>(f.size() - wire::kFrameHeaderBytes);
    std::memcpy(f.data() + 8, &n, 4);
  }
  void MutateOnce(Bytes& f, const std::vector<Bytes>& pool) {
    static const uint32_t kInteresting[] = {0, 1, 2, 3, 15, 16, 17, 255, 256, 4096, 65535, 65536, 65537,
                                            1u << 20, (1u << 24) + 1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff};
    switch (rng_() % 10) {
      case 0:  // flip a bit
        if (!f.empty()) f[Pos(f)] ^= static_cast<uint8_t>(1u << (rng_() % 8));
        break;
      case 1:  // an interesting byte
        if (!f.empty()) f[Pos(f)] = static_cast<uint8_t>(kInteresting[Pick(std::size(kInteresting))]);
        break;
      case 2:  // an interesting u32 (counts, lengths, sizes)
      case 3:
        if (f.size() >= 4) {
          const size_t at = std::min(Pos(f), f.size() - 4);
          const uint32_t v = kInteresting[Pick(std::size(kInteresting))];
          std::memcpy(f.data() + at, &v, 4);
        }
        break;
      case 4:  // truncate
        f.resize(Pick(f.size() + 1));
        break;
      case 5: {  // insert random bytes
        const size_t at = Pos(f);
        for (size_t i = 0, n = 1 + Pick(16); i < n; ++i) f.insert(f.begin() + static_cast<ptrdiff_t>(at), static_cast<uint8_t>(rng_()));
        break;
      }
      case 6: {  // erase a range
        if (f.empty()) break;
        const size_t at = Pos(f);
        const size_t n = std::min(f.size() - at, 1 + Pick(32));
        f.erase(f.begin() + static_cast<ptrdiff_t>(at), f.begin() + static_cast<ptrdiff_t>(at + n));
        break;
      }
      case 7: {  // duplicate a slice (repeated list items)
        if (f.size() <= wire::kFrameHeaderBytes) break;
        const size_t at = Pos(f);
        const size_t n = std::min(f.size() - at, 1 + Pick(64));
        Bytes slice(f.begin() + static_cast<ptrdiff_t>(at), f.begin() + static_cast<ptrdiff_t>(at + n));
        f.insert(f.begin() + static_cast<ptrdiff_t>(at), slice.begin(), slice.end());
        break;
      }
      case 8: {  // splice: this header, another frame's payload tail
        const Bytes& o = pool[Pick(pool.size())];
        if (f.size() < wire::kFrameHeaderBytes || o.size() < wire::kFrameHeaderBytes) break;
        const size_t keep = wire::kFrameHeaderBytes + Pick(f.size() - wire::kFrameHeaderBytes + 1);
        const size_t from = wire::kFrameHeaderBytes + Pick(o.size() - wire::kFrameHeaderBytes + 1);
        f.resize(keep);
        f.insert(f.end(), o.begin() + static_cast<ptrdiff_t>(from), o.end());
        break;
      }
      default:  // another message type for the same payload
        if (f.size() >= 8) {
          const uint16_t t = static_cast<uint16_t>(1 + Pick(static_cast<size_t>(wire::kLastMsgType)));
          std::memcpy(f.data() + 6, &t, 2);
        }
    }
  }
  std::mt19937_64 rng_;
};

// Runs FuzzOne over mutants of the corpus until `budget` passes or `max_inputs` ran; returns
// how many ran. Mutants that some decoder accepted join the pool (at most 2,000).
size_t RunFuzz(uint64_t seed, Clock::duration budget, size_t max_inputs, std::vector<Bytes>* kept) {
  std::vector<Bytes> pool = daemon_fuzz::SeedCorpus();
  FrameMutator mutator(seed);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  const auto until = Clock::now() + budget;
  size_t ran = 0;
  for (const Bytes& b : pool) daemon_fuzz::FuzzOne(b.data(), b.size());
  uint64_t accepted_before = 0;
  for (uint64_t a : daemon_fuzz::AcceptedByType()) accepted_before += a;
  while (ran < max_inputs && (ran % 256 != 0 || Clock::now() < until)) {
    const Bytes m = mutator.Mutate(pool[rng() % pool.size()], pool);
    daemon_fuzz::FuzzOne(m.data(), m.size());
    ++ran;
    uint64_t accepted = 0;
    for (uint64_t a : daemon_fuzz::AcceptedByType()) accepted += a;
    if (accepted != accepted_before && pool.size() < 2000) pool.push_back(m);
    accepted_before = accepted;
    if (kept != nullptr && kept->size() < 4000 && rng() % 64 == 0) kept->push_back(m);
  }
  return ran;
}

TEST(DaemonProtocolFuzzTest, EveryDecoderSurvivesMutatedFramesAndReencodesWhatItAccepts) {
  const auto before = daemon_fuzz::AcceptedByType();
  const size_t ran = RunFuzz(20261203, std::chrono::seconds(15), 20'000'000, nullptr);
  const auto& after = daemon_fuzz::AcceptedByType();
  uint64_t accepted = 0;
  for (size_t t = 1; t < after.size(); ++t) {
    // Every type's seed decoded (so its re-encoding check ran) ...
    EXPECT_GT(after[t], before[t]) << wire::MsgTypeName(static_cast<wire::MsgType>(t));
    accepted += after[t] - before[t];
  }
  // ... and many mutants did too (a token id or a payload byte changes nothing).
  EXPECT_GT(accepted, ran / 100) << "of " << ran;
  std::printf("{\"fuzz_inputs\": %zu, \"accepted\": %llu}\n", ran, static_cast<unsigned long long>(accepted));
}

TEST(DaemonProtocolFuzzTest, RandomBytesAndShortInputs) {
  std::mt19937_64 rng(99);
  for (int i = 0; i < 20000; ++i) {
    Bytes b(rng() % 64);
    for (auto& x : b) x = static_cast<uint8_t>(rng());
    daemon_fuzz::FuzzOne(b.data(), b.size());
  }
  daemon_fuzz::FuzzOne(nullptr, 0);
}

// Mutated frames against a live daemon, each on its own connection (after a hello, mostly):
// the daemon answers or closes every one, and a normal client saves and loads correctly
// throughout.
TEST(DaemonProtocolFuzzTest, ALiveDaemonKeepsServingAcrossMutatedFrames) {
  std::vector<Bytes> mutants;
  (void)RunFuzz(7, std::chrono::seconds(3), 200'000, &mutants);
  ASSERT_GT(mutants.size(), 100u);

  kvtest::TempDir dir;
  DaemonOptions o;
  o.store = kvtest::SmallOptions(dir.path());
  o.store.huge_pages = false;
  o.frame_timeout_ms = 2000;  // a mutant announcing more than it sends is cut (or closed by us)
  auto d = Daemon::Start(o);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  ClientOptions co;
  co.address = (*d)->socket_path();
  co.timeout_ms = 5000;
  auto client = Client::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  const Namespace ns = kvtest::MakeNamespace(kvtest::MakeLayout(), "fuzz-normal");

  const auto hello = daemon_fuzz::SeedCorpus()[1];  // a hello without a token (SeedCorpus order)
  const auto until = Clock::now() + std::chrono::seconds(20);
  size_t sent = 0;
  for (size_t i = 0; i < mutants.size() && Clock::now() < until; ++i) {
    auto fd = wire::ConnectUnix((*d)->socket_path());
    ASSERT_TRUE(fd.ok()) << fd.status().ToString();
    wire::SetIoTimeouts(fd->get(), 5000);
    if (i % 4 != 0) (void)send(fd->get(), hello.data(), hello.size(), MSG_NOSIGNAL);
    (void)send(fd->get(), mutants[i].data(), mutants[i].size(), MSG_NOSIGNAL);
    shutdown(fd->get(), SHUT_WR);
    // Drain whatever comes back until the daemon closes: it must close (no hang).
    char buf[4096];
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    ssize_t n;
    while ((n = recv(fd->get(), buf, sizeof buf, 0)) > 0 && Clock::now() < deadline) {
    }
    ASSERT_EQ(n, 0) << "mutant " << i << ": the daemon neither answered nor closed";
    ++sent;
    if (i % 100 == 0) {
      const auto tokens = kvtest::MakeTokens(1000 + i, 40);
      std::vector<ChunkSpan> spans;
      ASSERT_TRUE(kvtest::PutChain(**client, ns, tokens, &spans).ok());
      for (const ChunkSpan& s : spans) {
        std::string why;
        ASSERT_EQ(kvtest::CheckChunk(**client, ns, s.key, s.tokens, nullptr, &why), kvtest::Check::kMatch) << why;
      }
    }
  }
  EXPECT_GT(sent, 100u);
  EXPECT_EQ((*d)->Counters().message_bytes_in_use, 0u);
  EXPECT_TRUE((*d)->Stop().ok());
}

}  // namespace
}  // namespace kvault
