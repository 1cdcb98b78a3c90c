// Model weights through the store (docs/MODELS.md, "Weights in the store").
//
// A model's weights image (engine/weight_image.h) is kept as entries of a weights namespace of
// the store, so that T1 (host DRAM, shared with every process of the node through kvaultd) and
// T2 (local SSD) hold the models a node serves, and a switch reads them at DRAM or disk speed
// instead of parsing and dequantizing the source file again.
//
// How the image maps onto the store's chunks (no store change: the store stays a store of
// checksummed, chained-key chunks):
//   - The weights namespace of a model is Namespace(kWeightsTenant, fingerprint, kWeightsLayout).
//     kWeightsLayout has one "token" = 4096 raw bytes (one layer, one head, head_dim 2048, dtype
//     f8: no KV codec ever encodes it) and 4096 tokens per chunk, so a chunk is 16 MiB.
//   - The stream stored there is [manifest][image], each padded to 4096 bytes; its "tokens" are
//     the indices of its 4096-byte units (0, 1, 2, ...), so chunk i's key is the chain key of
//     units [4096 i, 4096 (i + 1)). The manifest (first unit onward) says how long the stream is.
//     The chain starts after a root that names the manifest: root = ChainKey(ns, ns.id(), the 8
//     words of SHA-256(manifest bytes)), chunk 0 follows it. So every key names its content: two
//     sources of the same weights whose manifests differ (another name, another text side) are
//     two streams and never mix chunks (a stream with the same keys and other offsets could not
//     be told apart otherwise), and a reader checks the manifest against its digest.
//   - The manifest: magic "KVWIMG01", format version, manifest and image bytes, the fingerprint,
//     then JSON: the ModelConfig and the WeightImagePlan; then `extras` byte for byte as given
//     (the caller's JSON object: the model's name, description and text side, so that a model
//     whose file is gone can still be served; a reader hands it on unparsed).
//   - A source index maps "this file, as it is now" to a fingerprint and its manifest: namespace
//     Namespace(kWeightsSourceTenant, zero digest, kWeightsLayout), one partial chunk whose 8
//     tokens are the 8 words of SHA-256(source identity); it holds the fingerprint and the
//     manifest's digest. A fingerprint index (Namespace(kWeightsSourceTenant, fingerprint,
//     kWeightsLayout), the 8 words of the fingerprint) names the first manifest stored for a
//     fingerprint: how a reader that knows only the fingerprint finds a stream.
//
// Integrity: the store checksums every T2 and T3 record and refuses a corrupt one (kNotFound),
// so a damaged image is a miss here and the caller loads from the file. ReadOptions::verify
// also recomputes the fingerprint over the loaded tensors (one hash pass).
//
// Thread-safety: the functions may be called from any thread; they use only the Store (which is
// thread-safe) and their own buffers.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>

#include "engine/model_config.h"
#include "engine/weight_image.h"
#include "engine/weights.h"
#include "kvault/store.h"

namespace kvault::models {

inline constexpr const char* kWeightsTenant = "kvault.weights";
inline constexpr const char* kWeightsSourceTenant = "kvault.weights.source";
KvLayout WeightsLayout();  // the layout described above

// Where a model's weights came from.
enum class WeightsFrom : uint8_t { kFile = 0, kT1 = 1, kT2 = 2, kT3 = 3, kGenerated = 4 };
const char* WeightsFromName(WeightsFrom from);  // "file", "T1", "T2", "T3", "generated"

// Stores `weights` (CPU, any float dtype the engine uses) under their fingerprint, with
// `extras_json` (a JSON object) in the manifest. Chunks the store already holds are skipped,
// so saving a model twice writes nothing. Put into T1; the store's write-behind takes them to
// T2 (Store::Flush waits for it). Since a put never waits for the disk (T1 under pressure drops
// chunks the write-behind has not reached), the writer calls Flush each time it has put a
// quarter of T1, so an image larger than T1 still reaches T2 whole. kNoSpace for an image
// larger than T1 in a store without T2.
// `manifest_digest`, when given, receives the manifest's digest (for PutSourceFingerprint).
Status PutWeightImage(Store& store, const engine::ModelConfig& config, const engine::ModelWeights& weights,
                      const std::string& extras_json, Digest* manifest_digest = nullptr);

struct ReadOptions {
  // Chunks read (and promoted from T2) at once; each pins its chunk in T1 while it copies, so
  // at most as many as half of T1 holds. The readers mostly wait for the disk, which reads
  // faster with more requests in flight (docs/BENCHMARKS.md, "Model switching": on this VM's
  // disk 16 reach 0.87x of a sequential O_DIRECT read, 4 reach 0.76x).
  int threads = 16;
  bool verify = false;   // recompute the fingerprint over the loaded tensors
  // An arena to load into when it is large enough (a model switched out gives its arena to
  // the next one: no page faults on a warm buffer); else a new one is allocated.
  torch::Tensor reuse_arena;
  // The stream of this manifest (GetSourceFingerprint gives it); zero: the first manifest
  // stored for the fingerprint (its fingerprint index).
  Digest manifest;
};

struct ImageRead {
  engine::ModelConfig config;
  engine::ModelWeights weights;   // views of `arena`
  torch::Tensor arena;
  std::string extras_json;
  WeightsFrom from = WeightsFrom::kT1;  // the lowest tier any chunk came from
  uint64_t image_bytes = 0;             // tensor bytes read (the image, without the manifest)
  uint64_t chunks = 0, chunks_t1 = 0, chunks_t2 = 0, chunks_t3 = 0;
  double seconds = 0;                   // the whole read, arena allocation included
};

// Reads the image of the model `fingerprint`. kNotFound when any chunk is missing or corrupt
// (the message says which and why), kInvalidArgument for a manifest that does not parse or
// does not match its plan, kCorruption when `verify` finds another fingerprint.
Result<ImageRead> GetWeightImage(Store& store, const Digest& fingerprint, const ReadOptions& options);

// The source index: `identity` (SourceIdentity) -> fingerprint (and the digest of the manifest
// saved from that source, zero when not given). An entry is written once: a source whose
// identity changes gets a new one.
Status PutSourceFingerprint(Store& store, const std::string& identity, const Digest& fingerprint,
                            const Digest& manifest = Digest{});
// kNotFound on a miss; `manifest`, when given, receives the stored manifest digest.
Result<Digest> GetSourceFingerprint(Store& store, const std::string& identity, Digest* manifest = nullptr);

// What identifies a model source as it is now, without reading it whole: the canonical path,
// size, modification time (ns), inode and device of every file it reads (a directory's config,
// safetensors and tokenizer files), a hash of the first and last 64 KiB of each, the engine
// dtype and the loader's version. A file that changes changes it. kNotFound when a file is
// missing.
Result<std::string> SourceIdentity(const std::string& path, torch::ScalarType dtype);

}  // namespace kvault::models
