#include "codec_bench.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "apps/demo/demo_plan.h"
#include "apps/runtime_setup.h"
#include "engine/engine.h"
#include "engine/kv_pool.h"
#include "engine/model.h"
#include "kvault/kv_codec.h"
#include "models/model_loader.h"

namespace kvault {
namespace {

using engine::LlamaModel;
using engine::ModelConfig;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;
using Bytes = std::vector<std::byte>;

void Progress(const std::string& what) { std::fprintf(stderr, "[bench codec] %s\n", what.c_str()); }

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string Fixed(double v, int digits) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

torch::ScalarType TorchDType(DType d) {
  switch (d) {
    case DType::kF32: return torch::kFloat32;
    case DType::kF16: return torch::kHalf;
    case DType::kBF16: return torch::kBFloat16;
    default: throw std::invalid_argument("no LibTorch dtype for KV dtype " + std::string(DTypeName(d)));
  }
}

torch::Tensor Ids(const std::vector<uint32_t>& tokens, size_t from, size_t to) {
  std::vector<int64_t> ids(tokens.begin() + static_cast<long>(from), tokens.begin() + static_cast<long>(to));
  return torch::tensor(ids, torch::kInt64);
}

// The mode's defaults for options left at 0 (-1 for `answers`, where 0 means none).
CodecBenchOptions Resolve(CodecBenchOptions o) {
  auto pick = [&](auto& v, auto full, auto quick) {
    if (v == 0) v = o.quick ? quick : full;
  };
  pick(o.tokens, int64_t{20480}, int64_t{512});
  pick(o.prefix_tokens, int64_t{512}, int64_t{256});
  pick(o.continuation_tokens, int64_t{256}, int64_t{128});
  if (o.answers < 0) o.answers = o.quick ? 2 : 6;
  pick(o.answer_tokens, 32, 8);
  pick(o.document_tokens, 1000, 300);
  pick(o.speed_chunks, 8, 2);
  pick(o.repeats, 5, 2);
  return o;
}

// One sequence's KV in the engine's own paged pool (pre-RoPE K; a page is one store chunk), and
// the store's chunk payloads of it: chunk c holds positions [c * chunk_tokens, + tokens) in
// `layout` ([layer][K then V][tokens][kv_heads][head_dim]), what the saver copies out of the
// pages and the loader copies back. Not thread-safe (one bench thread).
class PagedSequence {
 public:
  PagedSequence(const ModelConfig& config, torch::ScalarType dtype, const KvLayout& layout, int64_t capacity)
      : layout_(layout),
        pool_(config, dtype, torch::Device(torch::kCPU), layout.chunk_tokens,
              (capacity + layout.chunk_tokens - 1) / layout.chunk_tokens),
        kv_(std::make_shared<engine::PageLease>(&pool_, *pool_.Allocate(pool_.num_pages()))) {}

  engine::SequenceKv& kv() { return kv_; }

  // Tokens of chunk c of a `length`-token prefix.
  uint32_t ChunkTokens(int64_t c, int64_t length) const {
    return static_cast<uint32_t>(std::min<int64_t>(layout_.chunk_tokens, length - c * layout_.chunk_tokens));
  }
  Bytes ReadChunk(int64_t c, uint32_t tokens) const {
    Bytes raw(layout_.chunk_bytes(tokens));
    const int32_t page = kv_.lease()->pages()[c];
    const size_t half = static_cast<size_t>(tokens) * pool_.token_bytes();
    for (uint32_t l = 0; l < layout_.num_layers; ++l) {
      std::byte* dst = raw.data() + layout_.layer_range(l, tokens).offset;
      std::memcpy(dst, pool_.KPage(l, page), half);
      std::memcpy(dst + half, pool_.VPage(l, page), half);
    }
    return raw;
  }
  void WriteChunk(int64_t c, uint32_t tokens, const Bytes& raw) {
    const int32_t page = kv_.lease()->pages()[c];
    const size_t half = static_cast<size_t>(tokens) * pool_.token_bytes();
    for (uint32_t l = 0; l < layout_.num_layers; ++l) {
      const std::byte* src = raw.data() + layout_.layer_range(l, tokens).offset;
      std::memcpy(pool_.KPage(l, page), src, half);
      std::memcpy(pool_.VPage(l, page), src + half, half);
    }
  }
  // The store payloads of positions [0, length).
  std::vector<Bytes> ReadPrefix(int64_t length) const {
    std::vector<Bytes> out;
    for (int64_t c = 0; c * layout_.chunk_tokens < length; ++c) out.push_back(ReadChunk(c, ChunkTokens(c, length)));
    return out;
  }

 private:
  KvLayout layout_;
  engine::KvPool pool_;
  engine::SequenceKv kv_;
};

// The KV's own error after a round trip, over every value that went through the codec.
struct KvError {
  double max_abs = 0;
  double k_sq_err = 0, k_sq = 0, v_sq_err = 0, v_sq = 0;
  void Add(const KvLayout& layout, const Bytes& exact, const Bytes& decoded) {
    const auto dt = TorchDType(layout.dtype);
    const int64_t n = static_cast<int64_t>(exact.size() / DTypeSize(layout.dtype));
    const std::vector<int64_t> shape{static_cast<int64_t>(layout.num_layers), 2,
                                     n / 2 / static_cast<int64_t>(layout.num_layers)};
    auto x = torch::from_blob(const_cast<std::byte*>(exact.data()), {n}, dt).to(torch::kFloat64).view(shape);
    auto y = torch::from_blob(const_cast<std::byte*>(decoded.data()), {n}, dt).to(torch::kFloat64).view(shape);
    auto d = y - x;
    max_abs = std::max(max_abs, d.abs().max().item<double>());
    auto err = d.pow(2).sum(std::vector<int64_t>{0, 2});
    auto ref = x.pow(2).sum(std::vector<int64_t>{0, 2});
    k_sq_err += err[0].item<double>();
    v_sq_err += err[1].item<double>();
    k_sq += ref[0].item<double>();
    v_sq += ref[1].item<double>();
  }
};

// decode(encode(raw)) of one chunk.
Result<Bytes> RoundTrip(KvCodec codec, const KvLayout& layout, uint32_t tokens, const Bytes& raw) {
  Bytes encoded(EncodedChunkBytes(codec, layout, tokens));
  KVAULT_RETURN_IF_ERROR(EncodeKvChunk(codec, layout, tokens, raw, encoded));
  Bytes decoded(raw.size());
  KVAULT_RETURN_IF_ERROR(DecodeKvChunk(codec, layout, tokens, encoded, decoded, 1));
  return decoded;
}

// Per codec: the continuation's logits against exact's, and the answers.
struct CodecStats {
  KvCodec codec = KvCodec::kNone;
  double nll = 0;            // sum of -log p(target) over evaluated tokens
  int64_t agree = 0;         // argmax equals exact's argmax
  int64_t correct = 0;       // argmax equals the text's next token
  double logit_max = 0, logit_abs_sum = 0, kl_sum = 0;
  int64_t logit_values = 0;
  KvError kv;
  std::vector<int64_t> answer_first_diff;  // -1: identical to exact's answer
  std::vector<std::string> answer_texts;
  nlohmann::json speed;
};

// Exact KV's continuation of one window: its logits [C, V] and what every codec compares with.
struct Reference {
  torch::Tensor logits, logp, p, top, targets;
  Reference(torch::Tensor exact_logits, torch::Tensor target_ids)
      : logits(std::move(exact_logits)),
        logp(torch::log_softmax(logits.to(torch::kFloat64), -1)),
        p(logp.exp()),
        top(logits.argmax(-1)),
        targets(std::move(target_ids)) {}
};

// Adds a continuation's logits [C, V] of one window to `s`, against exact's.
void Accumulate(CodecStats& s, const torch::Tensor& logits, const Reference& ref) {
  auto logp = torch::log_softmax(logits.to(torch::kFloat64), -1);
  s.nll -= logp.gather(1, ref.targets.unsqueeze(1)).sum().item<double>();
  auto top = logits.argmax(-1);
  s.agree += top.eq(ref.top).sum().item<int64_t>();
  s.correct += top.eq(ref.targets).sum().item<int64_t>();
  auto diff = (logits - ref.logits).abs();
  s.logit_max = std::max(s.logit_max, diff.max().item<double>());
  s.logit_abs_sum += diff.to(torch::kFloat64).sum().item<double>();
  s.logit_values += diff.numel();
  s.kl_sum += (ref.p * (ref.logp - logp)).sum().item<double>();
}

// A document: its name and tokens.
struct Document {
  std::string name;
  std::vector<uint32_t> tokens;
  int64_t windows = 0;
};

Result<std::vector<Document>> ReadDocuments(const CodecBenchOptions& o, const models::LoadedModel& m) {
  std::vector<std::string> paths = o.texts;
  if (paths.empty()) {
    // Debian's license texts (every Debian machine has them; `kvault demo` talks about them),
    // longest first, one version of each (LGPL-2 and GFDL-1.2 nearly repeat LGPL-2.1 and GFDL-1.3).
    for (const char* name : {"GPL-3", "LGPL-2.1", "MPL-1.1", "GFDL-1.3", "GPL-2", "MPL-2.0", "GPL-1", "Apache-2.0",
                             "LGPL-3", "CC0-1.0", "Artistic"}) {
      std::string p = std::string("/usr/share/common-licenses/") + name;
      std::error_code ec;
      if (fs::is_regular_file(p, ec)) paths.push_back(p);
    }
    if (paths.empty()) return Status::NotFound("no license text in /usr/share/common-licenses: give --text FILE");
  }
  std::vector<Document> docs;
  for (const auto& p : paths) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (!in) return Status::NotFound("--text " + p + ": cannot read it");
    Document d;
    d.name = fs::path(p).filename().string();
    d.tokens = m.tokenizer->Encode(ss.str(), m.add_bos);
    docs.push_back(std::move(d));
  }
  return docs;
}

// A window: document d, tokens [start, start + prefix + continuation + 1).
struct Window {
  size_t doc;
  size_t start;
};

// Windows taken from the documents in turn (one from each, then the next of each, ...), each
// document's continuations disjoint (stride = continuation), until `tokens` are evaluated.
std::vector<Window> MakeWindows(std::vector<Document>& docs, int64_t prefix, int64_t cont, int64_t tokens) {
  std::vector<Window> out;
  std::vector<size_t> next(docs.size(), 0);
  const size_t span = static_cast<size_t>(prefix + cont + 1);
  for (bool any = true; any && static_cast<int64_t>(out.size()) * cont < tokens;) {
    any = false;
    for (size_t d = 0; d < docs.size() && static_cast<int64_t>(out.size()) * cont < tokens; ++d) {
      if (next[d] + span > docs[d].tokens.size()) continue;
      out.push_back({d, next[d]});
      next[d] += static_cast<size_t>(cont);
      ++docs[d].windows;
      any = true;
    }
  }
  return out;
}

// Greedy answer after a prompt whose positions [0, n-1) are already in `seq`: the last prompt
// token, then decode steps, until a stop token or `max_tokens`.
std::vector<uint32_t> Greedy(const LlamaModel& model, PagedSequence& seq, const std::vector<uint32_t>& prompt,
                             int max_tokens, const std::vector<uint32_t>& stop) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  auto logits = model.Forward(Ids(prompt, n - 1, n), n - 1, seq.kv(), false);
  std::vector<uint32_t> out;
  for (int64_t pos = n;; ++pos) {
    const auto tok = static_cast<uint32_t>(logits[0].argmax().item<int64_t>());
    out.push_back(tok);
    if (static_cast<int>(out.size()) >= max_tokens || std::find(stop.begin(), stop.end(), tok) != stop.end()) break;
    auto t = torch::tensor(std::vector<int64_t>{static_cast<int64_t>(tok)}, torch::kInt64);
    logits = model.DecodeBatch(t, {pos}, {&seq.kv()});
  }
  return out;
}

// Encode and decode rates of `codec` over `chunks` (whole chunks of `layout`): medians of
// `repeats` passes after a warm-up, in GB/s of decoded bytes.
Result<nlohmann::json> MeasureSpeed(KvCodec codec, const KvLayout& layout, const std::vector<Bytes>& chunks,
                                    int repeats, int all_threads) {
  const uint32_t tokens = layout.chunk_tokens;
  // One output per chunk, as a load decodes into distinct pages: the working set is the
  // chunks' bytes, not one chunk that stays in cache.
  std::vector<Bytes> encoded(chunks.size(), Bytes(EncodedChunkBytes(codec, layout, tokens)));
  std::vector<Bytes> decoded(chunks.size(), Bytes(layout.chunk_bytes(tokens)));
  double bytes = 0;
  for (const auto& c : chunks) bytes += static_cast<double>(c.size());
  auto encode_all = [&]() -> Status {
    for (size_t i = 0; i < chunks.size(); ++i) {
      KVAULT_RETURN_IF_ERROR(EncodeKvChunk(codec, layout, tokens, chunks[i], encoded[i]));
    }
    return Status::OK();
  };
  auto decode_all = [&](int threads) -> Status {
    for (size_t i = 0; i < encoded.size(); ++i) {
      KVAULT_RETURN_IF_ERROR(DecodeKvChunk(codec, layout, tokens, encoded[i], decoded[i], threads));
    }
    return Status::OK();
  };
  auto rate = [&](auto&& fn) -> Result<double> {
    KVAULT_RETURN_IF_ERROR(fn());  // warm-up
    std::vector<double> s;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = Clock::now();
      KVAULT_RETURN_IF_ERROR(fn());
      s.push_back(SecondsSince(t0));
    }
    return bytes / std::max(Median(s), 1e-12) / 1e9;
  };
  auto enc = rate(encode_all);
  if (!enc.ok()) return enc.status();
  auto dec1 = rate([&] { return decode_all(1); });
  if (!dec1.ok()) return dec1.status();
  auto decn = rate([&] { return decode_all(all_threads); });
  if (!decn.ok()) return decn.status();
  return nlohmann::json{{"encode_gbps", *enc}, {"decode_gbps", *dec1}, {"decode_gbps_all_cores", *decn},
                        {"bytes_timed", bytes}};
}

// `chunks` (in `from`) converted to `to`'s dtype.
std::vector<Bytes> Convert(const std::vector<Bytes>& chunks, const KvLayout& from, const KvLayout& to) {
  std::vector<Bytes> out;
  for (const auto& c : chunks) {
    const int64_t n = static_cast<int64_t>(c.size() / DTypeSize(from.dtype));
    auto t = torch::from_blob(const_cast<std::byte*>(c.data()), {n}, TorchDType(from.dtype)).to(TorchDType(to.dtype));
    Bytes b(static_cast<size_t>(n) * DTypeSize(to.dtype));
    std::memcpy(b.data(), t.data_ptr(), b.size());
    out.push_back(std::move(b));
  }
  return out;
}

struct Target {
  double ratio_min = 0, perplexity_max_pct = 0;
};
// Issue 18's targets; none for `none`.
std::optional<Target> TargetFor(KvCodec c) {
  if (c == KvCodec::kInt8) return Target{1.9, 0.2};
  if (c == KvCodec::kInt4) return Target{3.5, 2.0};
  return std::nullopt;
}
constexpr double kDecodeGbpsTarget = 4.0;

Status Bench(CodecBenchOptions o) {
  o = Resolve(o);
  if (o.dtype != "fp32" && o.dtype != "bf16") return Status::InvalidArgument("--dtype: fp32 or bf16");
  if (o.tokens < 1 || o.prefix_tokens < 1 || o.continuation_tokens < 1 || o.answer_tokens < 1 ||
      o.document_tokens < 1 || o.speed_chunks < 1 || o.repeats < 1 || o.chunk_tokens < 1 || o.threads < 0) {
    return Status::InvalidArgument("--tokens, --prefix-tokens, --continuation-tokens, --answer-tokens, "
                                   "--document-tokens, --speed-chunks, --repeats and --chunk-tokens must be positive");
  }
  if (o.codecs.empty()) return Status::InvalidArgument("--codecs: name at least one of none, int8, int4");
  std::vector<KvCodec> codecs;
  for (const auto& name : o.codecs) {
    KvCodec c;
    KVAULT_RETURN_IF_ERROR(ParseKvCodec(name, &c));
    if (std::find(codecs.begin(), codecs.end(), c) == codecs.end()) codecs.push_back(c);
  }
  const torch::ScalarType dtype = o.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  const int threads = apps::SetComputeThreads(o.threads);
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));

  Progress("loading " + o.model + " (" + o.dtype + ")");
  auto loaded = models::LoadModel(o.model, dtype, threads);
  if (!loaded.ok()) return loaded.status();
  const ModelConfig config = loaded->config;
  const KvLayout layout = engine::LayoutFor(config, dtype, o.chunk_tokens);
  KvLayout bf16 = layout;
  bf16.dtype = DType::kBF16;
  for (KvCodec c : codecs) {
    Status st = KvCodecSupports(c, layout);
    if (!st.ok()) {
      return Status(st.code(), std::string("codec ") + KvCodecName(c) + " cannot encode this model's KV (" +
                                   layout.ToString() + "): " + st.message());
    }
  }
  auto docs = ReadDocuments(o, *loaded);
  if (!docs.ok()) return docs.status();
  const auto model = std::make_shared<const LlamaModel>(config, std::move(loaded->weights), torch::Device(torch::kCPU));
  torch::NoGradGuard no_grad;

  // The demo's conversations (first turns) for the greedy answers.
  std::vector<std::vector<uint32_t>> prompts;
  std::vector<uint32_t> stop;
  if (o.answers > 0) {
    if (!loaded->chat_template) return Status::InvalidArgument("the model has no chat template: pass --answers 0");
    demo::DemoOptions d;
    d.sessions = o.answers;
    d.turns = 1;
    d.max_new_tokens = o.answer_tokens;
    d.document_tokens = o.document_tokens;
    auto plan = demo::MakeRealPlan(d, *loaded);
    if (!plan.ok()) return plan.status();
    stop = plan->stop_tokens;
    for (int s = 0; s < o.answers; ++s) {
      prompts.push_back(demo::Prompt(*plan, s, 0, {}));
      if (prompts.back().size() < 2) return Status::InvalidArgument("the chat template rendered an empty prompt for conversation " + std::to_string(s));
    }
  }

  const int64_t P = o.prefix_tokens, C = o.continuation_tokens;
  std::vector<Window> windows = MakeWindows(*docs, P, C, o.tokens);
  if (windows.empty()) {
    return Status::InvalidArgument("no document holds --prefix-tokens + --continuation-tokens + 1 = " +
                                   std::to_string(P + C + 1) + " tokens");
  }
  int64_t capacity = P + C + 1;
  for (const auto& p : prompts) capacity = std::max<int64_t>(capacity, static_cast<int64_t>(p.size()) + o.answer_tokens);
  if (capacity > config.max_position_embeddings) {
    return Status::InvalidArgument("a window or a conversation (" + std::to_string(capacity) +
                                   " tokens) exceeds the model's context of " +
                                   std::to_string(config.max_position_embeddings));
  }
  PagedSequence seq(config, dtype, layout, capacity);

  CodecStats exact;
  std::vector<CodecStats> stats(codecs.size());
  for (size_t i = 0; i < codecs.size(); ++i) stats[i].codec = codecs[i];
  std::vector<Bytes> speed_chunks;  // whole chunks of real KV for the speed measurement
  int64_t evaluated = 0;
  const auto t_acc = Clock::now();
  for (size_t w = 0; w < windows.size(); ++w) {
    const Document& doc = (*docs)[windows[w].doc];
    const size_t s = windows[w].start;
    const std::vector<uint32_t> ids(doc.tokens.begin() + static_cast<long>(s),
                                    doc.tokens.begin() + static_cast<long>(s + P + C + 1));
    if (w % 8 == 0) {
      Progress("window " + std::to_string(w + 1) + "/" + std::to_string(windows.size()) + " (" + doc.name + " @" +
               std::to_string(s) + "), " + Fixed(SecondsSince(t_acc), 0) + " s");
    }
    (void)model->Forward(Ids(ids, 0, P), 0, seq.kv(), false);
    const std::vector<Bytes> chunks = seq.ReadPrefix(P);
    for (size_t c = 0; c < chunks.size() && static_cast<int>(speed_chunks.size()) < o.speed_chunks; ++c) {
      if (seq.ChunkTokens(static_cast<int64_t>(c), P) == layout.chunk_tokens) speed_chunks.push_back(chunks[c]);
    }
    const auto cont = Ids(ids, P, P + C);
    const auto targets = Ids(ids, P + 1, P + C + 1);
    const Reference ref(model->Forward(cont, P, seq.kv(), true), targets);
    Accumulate(exact, ref.logits, ref);
    for (auto& st : stats) {
      for (size_t c = 0; c < chunks.size(); ++c) {
        const uint32_t tokens = seq.ChunkTokens(static_cast<int64_t>(c), P);
        auto decoded = RoundTrip(st.codec, layout, tokens, chunks[c]);
        if (!decoded.ok()) return Status(decoded.status().code(), std::string(KvCodecName(st.codec)) + ": " + decoded.status().message());
        st.kv.Add(layout, chunks[c], *decoded);
        seq.WriteChunk(static_cast<int64_t>(c), tokens, *decoded);
      }
      Accumulate(st, model->Forward(cont, P, seq.kv(), true), ref);
    }
    evaluated += C;
  }

  // Greedy answers: the prompt's KV (all but its last token) exactly, then through each codec.
  std::vector<std::vector<uint32_t>> exact_answers;
  for (size_t a = 0; a < prompts.size(); ++a) {
    const auto& prompt = prompts[a];
    const int64_t n = static_cast<int64_t>(prompt.size());
    Progress("answer " + std::to_string(a + 1) + "/" + std::to_string(prompts.size()) + " (" + std::to_string(n) +
             "-token prompt)");
    (void)model->Forward(Ids(prompt, 0, n - 1), 0, seq.kv(), false);
    const std::vector<Bytes> chunks = seq.ReadPrefix(n - 1);
    exact_answers.push_back(Greedy(*model, seq, prompt, o.answer_tokens, stop));
    const auto& ref = exact_answers.back();
    for (auto& st : stats) {
      for (size_t c = 0; c < chunks.size(); ++c) {
        const uint32_t tokens = seq.ChunkTokens(static_cast<int64_t>(c), n - 1);
        auto decoded = RoundTrip(st.codec, layout, tokens, chunks[c]);
        if (!decoded.ok()) return decoded.status();
        seq.WriteChunk(static_cast<int64_t>(c), tokens, *decoded);
      }
      const auto answer = Greedy(*model, seq, prompt, o.answer_tokens, stop);
      int64_t diff = -1;
      for (size_t i = 0; i < std::max(answer.size(), ref.size()); ++i) {
        if (i >= answer.size() || i >= ref.size() || answer[i] != ref[i]) {
          diff = static_cast<int64_t>(i);
          break;
        }
      }
      st.answer_first_diff.push_back(diff);
      st.answer_texts.push_back(loaded->tokenizer->Decode(answer, true));
    }
  }

  // Speed on whole chunks of the real KV, in the engine's dtype and in bf16.
  if (speed_chunks.empty()) {
    Progress("no whole chunk in a prefix (--prefix-tokens < --chunk-tokens): speed not measured");
  }
  const std::vector<Bytes> speed_bf16 = layout.dtype == DType::kBF16 ? speed_chunks : Convert(speed_chunks, layout, bf16);
  for (auto& st : stats) {
    if (speed_chunks.empty()) break;
    Progress(std::string("speed of ") + KvCodecName(st.codec) + " on " + std::to_string(speed_chunks.size()) +
             " chunks");
    auto sp = MeasureSpeed(st.codec, layout, speed_chunks, o.repeats, cores);
    if (!sp.ok()) return sp.status();
    st.speed = *sp;
    if (KvCodecSupports(st.codec, bf16).ok()) {
      auto sb = MeasureSpeed(st.codec, bf16, speed_bf16, o.repeats, cores);
      if (!sb.ok()) return sb.status();
      st.speed["bf16"] = *sb;
    }
  }

  // Report.
  const double n_eval = static_cast<double>(evaluated);
  const double ppl_exact = std::exp(exact.nll / n_eval);
  nlohmann::json out = {{"tool", "kvault bench codec"},
                        {"model", loaded->location.name},
                        {"model_description", loaded->description},
                        {"dtype", o.dtype},
                        {"layout", layout.ToString()},
                        {"kv_bytes_per_token", layout.token_bytes()},
                        {"kv_bytes_per_token_bf16", bf16.token_bytes()},
                        {"chunk_tokens", o.chunk_tokens},
                        {"prefix_tokens", P},
                        {"continuation_tokens", C},
                        {"windows", windows.size()},
                        {"tokens_evaluated", evaluated},
                        {"threads", threads},
                        {"cores", cores},
                        {"quick", o.quick},
                        {"perplexity_exact", ppl_exact},
                        {"top1_accuracy_exact", static_cast<double>(exact.correct) / n_eval}};
  nlohmann::json jdocs = nlohmann::json::array();
  for (const auto& d : *docs) jdocs.push_back({{"name", d.name}, {"tokens", d.tokens.size()}, {"windows", d.windows}});
  out["documents"] = jdocs;
  nlohmann::json jans = nlohmann::json::array();
  for (size_t a = 0; a < exact_answers.size(); ++a) {
    jans.push_back({{"prompt_tokens", prompts[a].size()},
                    {"answer_tokens", exact_answers[a].size()},
                    {"exact_answer", loaded->tokenizer->Decode(exact_answers[a], true)}});
  }
  out["answers"] = {{"conversations", prompts.size()},
                    {"max_answer_tokens", o.answer_tokens},
                    {"what", "first turns of kvault demo's conversations (a license text and a question, chat "
                             "template), greedy; the prompt's KV but its last token through the codec"},
                    {"exact", jans}};
  bool pass = true;
  std::vector<std::string> failures;
  nlohmann::json jc = nlohmann::json::array();
  for (const auto& st : stats) {
    const double ppl = std::exp(st.nll / n_eval);
    const double ratio = static_cast<double>(bf16.chunk_bytes(layout.chunk_tokens)) /
                         static_cast<double>(EncodedChunkBytes(st.codec, bf16, layout.chunk_tokens));
    const double agreement = static_cast<double>(st.agree) / n_eval;
    int identical = 0;
    for (int64_t d : st.answer_first_diff) identical += d < 0 ? 1 : 0;
    nlohmann::json j = {
        {"codec", KvCodecName(st.codec)},
        {"ratio", ratio},
        {"ratio_vs_engine_dtype", static_cast<double>(layout.chunk_bytes(layout.chunk_tokens)) /
                                      static_cast<double>(EncodedChunkBytes(st.codec, layout, layout.chunk_tokens))},
        {"encoded_bytes_per_token", static_cast<double>(EncodedChunkBytes(st.codec, layout, layout.chunk_tokens)) /
                                        static_cast<double>(layout.chunk_tokens)},
        {"perplexity_exact", ppl_exact},
        {"perplexity", ppl},
        {"perplexity_change_pct", (ppl / ppl_exact - 1) * 100},
        {"top1_agreement", agreement},
        {"top1_accuracy", static_cast<double>(st.correct) / n_eval},
        {"logit_max_abs_diff", st.logit_max},
        {"logit_mean_abs_diff", st.logit_values > 0 ? st.logit_abs_sum / static_cast<double>(st.logit_values) : 0},
        {"kl_mean", st.kl_sum / n_eval},
        {"kv_max_abs_error", st.kv.max_abs},
        {"k_rel_rmse", st.kv.k_sq > 0 ? std::sqrt(st.kv.k_sq_err / st.kv.k_sq) : 0},
        {"v_rel_rmse", st.kv.v_sq > 0 ? std::sqrt(st.kv.v_sq_err / st.kv.v_sq) : 0},
        {"answers_identical", identical},
        {"answers_total", st.answer_first_diff.size()},
        {"answers_first_diff", st.answer_first_diff},
        {"answers", st.answer_texts}};
    double decode_gbps = 0;
    if (!st.speed.is_null()) {
      decode_gbps = st.speed["decode_gbps"].get<double>();
      j["encode_gbps"] = st.speed["encode_gbps"];
      j["decode_gbps"] = decode_gbps;
      j["decode_gbps_all_cores"] = st.speed["decode_gbps_all_cores"];
      j["decode_threads_all_cores"] = cores;
      if (st.speed.contains("bf16")) {
        j["encode_gbps_bf16"] = st.speed["bf16"]["encode_gbps"];
        j["decode_gbps_bf16"] = st.speed["bf16"]["decode_gbps"];
        j["decode_gbps_bf16_all_cores"] = st.speed["bf16"]["decode_gbps_all_cores"];
      }
      j["speed_bytes_timed"] = st.speed["bytes_timed"];
    }
    if (auto t = TargetFor(st.codec)) {
      j["targets"] = {{"ratio_min", t->ratio_min},
                      {"perplexity_max_change_pct", t->perplexity_max_pct},
                      {"decode_gbps_min", kDecodeGbpsTarget},
                      {"ratio_met", ratio >= t->ratio_min},
                      {"perplexity_met", (ppl / ppl_exact - 1) * 100 <= t->perplexity_max_pct},
                      {"decode_met", decode_gbps >= kDecodeGbpsTarget},
                      {"decode_bf16_met", j.contains("decode_gbps_bf16") &&
                                              j["decode_gbps_bf16"].get<double>() >= kDecodeGbpsTarget}};
    }
    if (st.codec == KvCodec::kNone) {
      // The harness itself: exact KV back through `none` must give exact's logits bit for bit.
      if (!(ppl == ppl_exact && st.agree == evaluated && st.logit_max == 0 && st.kv.max_abs == 0 &&
            identical == static_cast<int>(st.answer_first_diff.size()))) {
        pass = false;
        failures.push_back("codec none does not reproduce exact KV");
      }
    }
    jc.push_back(std::move(j));
  }
  out["codecs"] = jc;
  out["pass"] = pass;
  if (!failures.empty()) out["failures"] = failures;

  if (o.json) {
    std::cout << out.dump() << std::endl;
  } else {
    std::cout << "kvault bench codec: " << loaded->description << ", " << o.dtype << " KV ("
              << layout.ToString() << ")\n"
              << "  " << evaluated << " continuation tokens evaluated in " << windows.size() << " windows of "
              << P << " + " << C << " tokens; " << prompts.size() << " greedy answers of up to " << o.answer_tokens
              << " tokens\n\n"
              << "  codec  ratio  ppl exact -> codec (change)     top-1 agr  max|dlogit|  KV max err  answers same"
                 "  enc GB/s  dec GB/s (1 core, all)\n";
    for (const auto& j : jc) {
      char line[512];
      std::snprintf(line, sizeof(line), "  %-5s  %5.2f  %.4f -> %.4f (%+.3f%%)  %9.4f  %11.4f  %10.5f  %5d / %-5d",
                    j["codec"].get<std::string>().c_str(), j["ratio"].get<double>(), ppl_exact,
                    j["perplexity"].get<double>(), j["perplexity_change_pct"].get<double>(),
                    j["top1_agreement"].get<double>(), j["logit_max_abs_diff"].get<double>(),
                    j["kv_max_abs_error"].get<double>(), j["answers_identical"].get<int>(),
                    j["answers_total"].get<int>());
      std::cout << line;
      if (j.contains("decode_gbps")) {
        std::cout << "  " << Fixed(j["encode_gbps"].get<double>(), 2) << "  " << Fixed(j["decode_gbps"].get<double>(), 2)
                  << ", " << Fixed(j["decode_gbps_all_cores"].get<double>(), 2);
      }
      std::cout << "\n";
    }
    const bool ran_none = std::find(codecs.begin(), codecs.end(), KvCodec::kNone) != codecs.end();
    std::cout << "  pass: " << (pass ? "yes" : "NO")
              << (ran_none ? " (codec none reproduces exact KV)\n" : " (codec none not run: nothing checked)\n");
  }
  if (!pass) return Status::Corruption(failures.front());
  return Status::OK();
}

}  // namespace

int RunCodecBench(const CodecBenchOptions& options) {
  try {
    Status st = Bench(options);
    if (!st.ok()) {
      std::fprintf(stderr, "kvault bench codec: %s\n", st.ToString().c_str());
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvault bench codec: %s\n", e.what());
    return 1;
  }
}

}  // namespace kvault
