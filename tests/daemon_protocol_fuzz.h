// The fuzz target of kvaultd's protocol: one input is one frame as it travels (16-byte header
// and payload). FuzzOne decodes the header and hands the payload to the decoder of the type
// the header names (every message type, requests and replies), and checks what a decoder
// accepts: it re-encodes to exactly the input bytes, the re-encoding decodes again, and an
// accepted request fits the frame cap of its type (MaxRequestBytes). A failed check aborts
// with a message (what libFuzzer and the gtest driver report). Decoders allocate at most a
// small multiple of the input size; nothing but AcceptedByType's counters outlives a call.
//
// Run by tests/daemon_protocol_fuzz_test.cc (a fixed seed, a mutator, bounded time) and, with
// -DKVAULT_FUZZ=ON under clang, by libFuzzer (daemon_protocol_fuzzer).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvault::daemon_fuzz {

void FuzzOne(const uint8_t* data, size_t size);

// Valid frames of every message type (requests and replies, token and keyed, shared-memory
// and inline variants): the seed corpus.
std::vector<std::vector<uint8_t>> SeedCorpus();

// How many inputs FuzzOne saw decode cleanly, by message type (1..22; index 0 unused), since
// the process started: the driver checks that the re-encoding checks actually ran.
const std::vector<uint64_t>& AcceptedByType();

}  // namespace kvault::daemon_fuzz
