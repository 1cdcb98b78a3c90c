#include "replay/trace.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

namespace kvault::replay {
namespace {

enum class KeyKind : uint8_t { kBlock = 1, kSession = 2, kPrefix = 3 };

uint64_t Mix64(uint64_t x) {  // splitmix64 finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// Bytes 0..7: a well-mixed hash (DigestHash reads them); bytes 8..31: the fields themselves,
// so distinct prefixes never share a key.
ChunkKey MakeKey(KeyKind kind, uint64_t id, uint32_t end, uint32_t copy) {
  ChunkKey k;
  const uint64_t h = Mix64(Mix64(id ^ (uint64_t{static_cast<uint8_t>(kind)} << 56)) ^ (uint64_t{end} << 20) ^ copy);
  std::memcpy(k.bytes.data(), &h, 8);
  k.bytes[8] = static_cast<uint8_t>(kind);
  std::memcpy(k.bytes.data() + 12, &id, 8);
  std::memcpy(k.bytes.data() + 20, &end, 4);
  std::memcpy(k.bytes.data() + 24, &copy, 4);
  return k;
}

Status LineError(size_t line, const std::string& what) {
  return Status::InvalidArgument("trace line " + std::to_string(line) + ": " + what);
}

Result<uint64_t> GetCount(const nlohmann::json& j, const char* field, size_t line, bool required) {
  auto it = j.find(field);
  if (it == j.end()) {
    if (required) return LineError(line, std::string("missing \"") + field + "\"");
    return uint64_t{0};
  }
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0)) {
    return LineError(line, std::string("\"") + field + "\" must be a non-negative integer");
  }
  const uint64_t v = it->get<uint64_t>();
  if (v > (1u << 30)) return LineError(line, std::string("\"") + field + "\" is implausibly large");
  return v;
}

Result<double> GetTimestamp(const nlohmann::json& j, size_t line) {
  auto it = j.find("timestamp");
  if (it == j.end() || !it->is_number() || it->get<double>() < 0) {
    return LineError(line, "\"timestamp\" (milliseconds, >= 0) is missing or invalid");
  }
  return it->get<double>();
}

struct SessionState {
  uint64_t history_tokens = 0;  // tokens of the session stream so far (prefix included)
  uint64_t prefix_id = 0;
  uint32_t prefix_tokens = 0;
};

}  // namespace

uint32_t TokenAt(uint64_t stream, uint64_t pos, uint32_t vocab) {
  return static_cast<uint32_t>(Mix64(Mix64(stream) ^ pos) % (vocab - 1)) + 1;
}

Result<Trace> ParseTrace(const std::string& text, const TraceOptions& options) {
  if (options.chunk_tokens == 0 || options.block_tokens == 0) {
    return Status::InvalidArgument("chunk and block sizes must be positive");
  }
  if (options.repeat == 0) return Status::InvalidArgument("repeat must be at least 1");
  const uint32_t c = options.chunk_tokens;
  Trace trace;
  trace.chunk_tokens = c;
  std::vector<TraceRequest> base;
  std::unordered_map<std::string, SessionState> sessions;
  // For each request of one copy: chunk ends and the (kind, id) identifying each.
  struct Ident {
    KeyKind kind;
    uint64_t id;
    uint32_t end;           // the key's offset (block-relative for Mooncake)
    int64_t stream_begin;   // see TraceChunk
  };
  std::vector<std::vector<Ident>> idents;

  std::istringstream in(text);
  std::string line;
  size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (options.max_requests > 0 && base.size() >= options.max_requests) break;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return LineError(line_no, "not a JSON object");
    const bool mooncake = j.contains("hash_ids");
    const bool session = j.contains("session");
    if (mooncake == session) return LineError(line_no, "expected either \"hash_ids\" (Mooncake) or \"session\"");
    const std::string fmt = mooncake ? "mooncake" : "sessions";
    if (trace.format.empty()) trace.format = fmt;
    if (trace.format != fmt) return LineError(line_no, "mixes the Mooncake and session formats");

    TraceRequest r;
    auto ts = GetTimestamp(j, line_no);
    if (!ts.ok()) return ts.status();
    r.arrival_ms = ts.value();
    std::vector<Ident> id;
    if (mooncake) {
      auto in_len = GetCount(j, "input_length", line_no, true);
      auto out_len = GetCount(j, "output_length", line_no, false);
      if (!in_len.ok()) return in_len.status();
      if (!out_len.ok()) return out_len.status();
      r.input_tokens = static_cast<uint32_t>(in_len.value());
      r.output_tokens = static_cast<uint32_t>(out_len.value());
      const auto& ids = j["hash_ids"];
      if (!ids.is_array()) return LineError(line_no, "\"hash_ids\" must be an array");
      const uint64_t blocks = (uint64_t{r.input_tokens} + options.block_tokens - 1) / options.block_tokens;
      if (ids.size() != blocks) {
        return LineError(line_no, "has " + std::to_string(ids.size()) + " hash_ids for " + std::to_string(r.input_tokens) +
                                      " tokens (expected ceil(input_length / " + std::to_string(options.block_tokens) +
                                      ") = " + std::to_string(blocks) + ")");
      }
      std::vector<uint64_t> block_ids;
      for (const auto& v : ids) {
        if (!v.is_number_integer()) return LineError(line_no, "hash_ids must be integers");
        block_ids.push_back(static_cast<uint64_t>(v.get<int64_t>()));
      }
      uint64_t bt = options.block_tokens;
      if (options.scaled_block_tokens > 0 && blocks > 0) {
        const uint64_t last = r.input_tokens - (blocks - 1) * bt;
        bt = options.scaled_block_tokens;
        r.input_tokens = static_cast<uint32_t>((blocks - 1) * bt + (last * bt + options.block_tokens - 1) / options.block_tokens);
        r.output_tokens = static_cast<uint32_t>((uint64_t{r.output_tokens} * bt + options.block_tokens - 1) / options.block_tokens);
      }
      for (uint64_t begin = 0; begin < r.input_tokens; begin += c) {
        const uint32_t end = static_cast<uint32_t>(std::min<uint64_t>(begin + c, r.input_tokens));
        const uint64_t b = (end - 1) / bt;
        const int64_t within = begin >= b * bt ? int64_t(begin - b * bt) : -1;
        id.push_back({KeyKind::kBlock, block_ids[b], static_cast<uint32_t>(end - b * bt), within});
      }
    } else {
      if (!j["session"].is_string() && !j["session"].is_number_integer()) {
        return LineError(line_no, "\"session\" must be a string or an integer");
      }
      const std::string name = j["session"].is_string() ? j["session"].get<std::string>() : j["session"].dump();
      auto in_len = GetCount(j, "input_tokens", line_no, true);
      auto out_len = GetCount(j, "output_tokens", line_no, false);
      auto pre_len = GetCount(j, "prefix_tokens", line_no, false);
      if (!in_len.ok()) return in_len.status();
      if (!out_len.ok()) return out_len.status();
      if (!pre_len.ok()) return pre_len.status();
      if (in_len.value() == 0) return LineError(line_no, "\"input_tokens\" must be at least 1");
      auto [it, fresh] = sessions.try_emplace(name);
      SessionState& s = it->second;
      if (fresh) {
        if (j.contains("prefix")) {
          if (!j["prefix"].is_string()) return LineError(line_no, "\"prefix\" must be a string");
          s.prefix_id = Fnv1a("prefix:" + j["prefix"].get<std::string>());
          s.prefix_tokens = static_cast<uint32_t>(pre_len.value());
        } else if (pre_len.value() > 0) {
          return LineError(line_no, "\"prefix_tokens\" without \"prefix\"");
        }
        s.history_tokens = s.prefix_tokens;
      }
      const uint64_t total = s.history_tokens + in_len.value();
      if (total > (1u << 30)) return LineError(line_no, "session grew implausibly long");
      r.input_tokens = static_cast<uint32_t>(total);
      r.output_tokens = static_cast<uint32_t>(out_len.value());
      const uint64_t session_id = Fnv1a("session:" + name);
      for (uint64_t begin = 0; begin < total; begin += c) {
        const uint32_t end = static_cast<uint32_t>(std::min<uint64_t>(begin + c, total));
        if (end <= s.prefix_tokens) {
          id.push_back({KeyKind::kPrefix, s.prefix_id, end, int64_t(begin)});
        } else {
          id.push_back({KeyKind::kSession, session_id, end, begin >= s.prefix_tokens ? int64_t(begin) : -1});
        }
      }
      s.history_tokens = total + r.output_tokens;
    }
    if (r.input_tokens == 0) return LineError(line_no, "empty prompt");
    base.push_back(std::move(r));
    idents.push_back(std::move(id));
  }
  if (base.empty()) return Status::InvalidArgument("the trace has no requests");

  // Stable sort by arrival (traces are usually sorted already).
  std::vector<size_t> order(base.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return base[a].arrival_ms < base[b].arrival_ms; });
  const double span_ms = base[order.back()].arrival_ms - base[order.front()].arrival_ms;
  const double gap_ms = base.size() > 1 ? span_ms / double(base.size() - 1) : 1.0;

  // What an infinite cache would serve, with the store's rules: whole chunks until the first
  // unseen one, then the longest earlier trailing partial chunk that this chunk extends (same
  // parent, same token stream from the same place).
  std::unordered_set<ChunkKey, DigestHash> seen;
  std::unordered_map<ChunkKey, std::vector<TraceChunk>, DigestHash> partials;  // by parent
  for (uint32_t copy = 0; copy < options.repeat; ++copy) {
    for (size_t i : order) {
      TraceRequest r = base[i];
      r.arrival_ms += copy * (span_ms + gap_ms);
      uint32_t prev_end = 0;
      bool reusable = true;
      ChunkKey parent{};
      for (const Ident& x : idents[i]) {
        const uint32_t tokens = x.kind == KeyKind::kBlock ? static_cast<uint32_t>(std::min<uint64_t>(c, r.input_tokens - prev_end))
                                                          : x.end - prev_end;
        TraceChunk ch{MakeKey(x.kind, x.id, x.end, copy), tokens, Mix64(x.id ^ (uint64_t{copy} << 48)), x.stream_begin};
        prev_end += tokens;
        const bool fresh = seen.insert(ch.key).second;
        if (fresh) {
          ++trace.unique_chunks;
          trace.unique_tokens += ch.tokens;
          if (ch.stream_begin >= 0) {
            uint32_t best = 0;
            for (const TraceChunk& p : partials[parent]) {
              if (p.stream != ch.stream || p.stream_begin != ch.stream_begin || p.tokens > ch.tokens) continue;
              best = std::max(best, p.tokens);
              r.partials_extended.push_back(p.key);
            }
            if (reusable) trace.reusable_tokens += best;
          }
          if (ch.tokens < c && ch.stream_begin >= 0) partials[parent].push_back(ch);
          reusable = false;
        } else if (reusable) {
          trace.reusable_tokens += ch.tokens;
        }
        parent = ch.key;
        r.chunks.push_back(ch);
      }
      trace.prompt_tokens += r.input_tokens;
      trace.requests.push_back(std::move(r));
    }
  }
  return trace;
}

Result<Trace> LoadTrace(const std::string& path, const TraceOptions& options) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::NotFound("cannot open trace file " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  auto t = ParseTrace(ss.str(), options);
  if (!t.ok()) return Status(t.status().code(), path + ": " + t.status().message());
  return t;
}

}  // namespace kvault::replay
