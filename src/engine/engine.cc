#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <future>
#include <limits>
#include <numeric>
#include <random>
#include <thread>

#include "engine/kv_pool.h"
#include "engine/kv_transfer.h"

namespace kvault::engine {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

DType StoreDType(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return DType::kF32;
    case torch::kBFloat16: return DType::kBF16;
    case torch::kHalf: return DType::kF16;
    default: throw std::invalid_argument("unsupported KV dtype");
  }
}

// A thread running posted jobs in order.
class Worker {
 public:
  Worker() : thread_([this] { Loop(); }) {}
  ~Worker() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Post(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_all();
  }
  void WaitIdle() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [&] { return jobs_.empty() && !busy_; });
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      busy_ = true;
      lock.unlock();
      job();
      lock.lock();
      busy_ = false;
      idle_cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::function<void()>> jobs_;  // GUARDED_BY(mu_)
  bool busy_ = false, stop_ = false;        // GUARDED_BY(mu_)
  std::thread thread_;
};

// How many layers of a layer-wise transfer are done; waiters block until theirs is.
class LayerProgress {
 public:
  void Set(int64_t layers) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = std::max(done_, layers);
    }
    cv_.notify_all();
  }
  void Fail(int64_t all_layers) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      failed_ = true;
    }
    Set(all_layers);
  }
  // Waits until layer `layer` is done; false if the transfer failed instead.
  bool WaitFor(int64_t layer) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ > layer; });
    return !failed_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t done_ = 0;    // GUARDED_BY(mu_)
  bool failed_ = false; // GUARDED_BY(mu_)
};

}  // namespace

KvLayout LayoutFor(const ModelConfig& config, torch::ScalarType dtype, int64_t chunk_tokens) {
  return KvLayout{static_cast<uint32_t>(config.num_layers), static_cast<uint32_t>(config.num_kv_heads),
                  static_cast<uint32_t>(config.head_dim), StoreDType(dtype), static_cast<uint32_t>(chunk_tokens),
                  RopeMode::kPreRope};
}

// One request from admission to its last token.
struct Sequence {
  explicit Sequence(Namespace n) : ns(std::move(n)) {}
  const Namespace ns;  // the store namespace of its tenant
  uint64_t id = 0;
  std::vector<uint32_t> orig;  // the original token stream: prompt, then fed generated tokens
  SamplingParams params;
  std::function<void(RequestResult)> done;
  Clock::time_point submitted;
  std::mt19937_64 rng;
  // Context overflow: pages [head_chunks, ...) hold original chunks shifted by dropped_chunks.
  int64_t head_chunks = 0, dropped_chunks = 0;
  int64_t prompt_len = 0;  // kept prompt tokens (new positions)
  std::unique_ptr<SequenceKv> kv;
  int64_t length = 0;        // positions whose KV is in the pool
  uint32_t next_token = 0;   // sampled, not yet fed
  bool stopped = false;
  RequestResult result;

  int64_t OrigChunk(int64_t page) const { return page < head_chunks ? page : page + dropped_chunks; }
  uint32_t TokenAt(int64_t pos, int64_t c) const { return orig[OrigChunk(pos / c) * c + pos % c]; }
};

struct Engine::Impl {
  Impl(std::shared_ptr<const LlamaModel> m, const EngineOptions& o, const Namespace& n)
      : model(std::move(m)),
        opt(o),
        ns(n),
        pool(model->config(), model->dtype(), model->device(), o.chunk_tokens,
             std::max<int64_t>(1, o.kv_pool_tokens / o.chunk_tokens)),
        planner(PlannerOptions(o, model->config())) {
    auto t = MakeKvTransfer(pool, n.layout(), o.store);
    if (!t.ok()) throw std::invalid_argument("the KV pool's device: " + t.status().ToString());
    transfer = std::move(t.value());
  }

  static planner::LoadPlanner::Options PlannerOptions(const EngineOptions& o, const ModelConfig& config) {
    planner::LoadPlanner::Options p = o.planner;
    p.layers = static_cast<int>(config.num_layers);
    return p;
  }

  Status Prefill(Sequence& s);
  std::vector<CachedChunk> CachedPages(const Sequence& s, int64_t dropped);
  void DecodeStep();
  void Finish(Sequence& s);
  // After s.next_token joined the output: streams it, and decides whether s stops.
  void Emitted(Sequence& s);
  // Samples the next token from one row of logits; records its log-probabilities in s.result
  // when the request asked for them.
  uint32_t Sample(Sequence& s, const torch::Tensor& logits);
  void ScheduleSave(Sequence& s, int64_t from, int64_t to, std::shared_ptr<LayerProgress> computed);

  std::shared_ptr<const LlamaModel> model;
  const EngineOptions opt;
  const Namespace ns;
  KvPool pool;

  mutable std::mutex queue_mu;
  std::deque<std::unique_ptr<Sequence>> queue;  // GUARDED_BY(queue_mu)
  uint64_t next_id = 1;                          // GUARDED_BY(queue_mu)
  std::vector<std::unique_ptr<Sequence>> running;  // engine loop thread only

  planner::LoadPlanner planner;  // before the workers: their jobs report to it
  std::unique_ptr<KvTransfer> transfer;  // store memory <-> pool pages; before the workers too
  Worker loader;  // opens the chunks to load, copies them into pages, layer by layer
  Worker saver;   // copies new KV out of pages into the store, layer by layer
};

Status Engine::Impl::Prefill(Sequence& s) {
  const int64_t c = opt.chunk_tokens;
  const int64_t layers = model->config().num_layers;
  const auto n = static_cast<int64_t>(s.orig.size());
  if (n == 0) return Status::InvalidArgument("empty prompt");
  if (s.params.max_new_tokens < 1) return Status::InvalidArgument("max_new_tokens must be at least 1");
  const int64_t vocab = model->config().vocab_size;
  for (uint32_t t : s.orig) {
    if (t >= vocab) return Status::InvalidArgument("token id " + std::to_string(t) + " outside the vocabulary");
  }
  // Context overflow: keep a head (whole chunks), drop whole chunks after it, keep the rest.
  const int64_t budget = opt.max_context - s.params.max_new_tokens;
  int64_t dropped = 0;
  if (n > budget) {
    const int64_t head = (opt.keep_head_tokens + c - 1) / c * c;
    dropped = (n - budget + c - 1) / c * c;
    if (head + dropped >= n) {
      return Status::InvalidArgument("prompt of " + std::to_string(n) + " tokens cannot fit a context of " +
                                     std::to_string(opt.max_context) + " with a kept head of " + std::to_string(head));
    }
    s.head_chunks = head / c;
    s.dropped_chunks = dropped / c;
  }
  const int64_t m = n - dropped;
  s.prompt_len = m;
  auto pages = pool.Allocate((m + s.params.max_new_tokens + c - 1) / c);
  if (!pages) return Status::ResourceExhausted("KV pool full");
  s.kv = std::make_unique<SequenceKv>(std::make_shared<PageLease>(&pool, std::move(*pages)));

  // The longest cached prefix, in new positions: page j holds original chunk OrigChunk(j).
  const auto lookup_start = Clock::now();
  std::vector<CachedChunk> page_chunks;
  if (opt.store != nullptr && opt.load) page_chunks = CachedPages(s, dropped);
  // Chunks that start inside the kept prompt; a stored partial chunk ends the chain.
  std::vector<planner::PlanChunk> plan_chunks;
  int64_t found = 0;  // cached tokens found by the lookup
  for (size_t j = 0; j < page_chunks.size() && static_cast<int64_t>(j) * c < m; ++j) {
    const int64_t t = std::min<int64_t>(page_chunks[j].tokens, m - static_cast<int64_t>(j) * c);
    plan_chunks.push_back({page_chunks[j].tier, t, s.ns.layout().chunk_bytes(page_chunks[j].tokens)});
    found += t;
    if (page_chunks[j].tokens < c) break;
  }
  page_chunks.resize(plan_chunks.size());

  // What to load and what to recompute.
  switch (opt.plan) {
    case PlanMode::kAuto: s.result.plan = planner.Plan(plan_chunks, std::max<int64_t>(1, m - found)); break;
    case PlanMode::kLoad:
      s.result.plan.cached_chunks = plan_chunks.size();
      s.result.plan.reason = "planner off: load";
      break;
    case PlanMode::kRecompute:
      s.result.plan.cached_chunks = plan_chunks.size();
      s.result.plan.kind = plan_chunks.empty() ? planner::PlanKind::kLoad : planner::PlanKind::kRecompute;
      s.result.plan.recompute_chunks = plan_chunks.size();
      s.result.plan.recompute_tokens = found;
      s.result.plan.reason = "planner off: recompute";
      break;
  }
  const size_t first_loaded = s.result.plan.recompute_chunks;
  // A prefix recomputed whole is just a longer forward pass below; a head recomputed while
  // the tail loads is a forward pass of its own first.
  const int64_t head = first_loaded < plan_chunks.size() ? static_cast<int64_t>(first_loaded) * c : 0;

  // Loader: open the chunks to load (T2/T3 ones are read into T1 here, while the head
  // computes), report them, then copy each one's layers straight into its page, in layer
  // order.
  struct Opened {
    std::vector<std::pair<Tier, int64_t>> served;  // tier and tokens of each opened chunk
    int64_t tokens = 0;                            // contiguous from `head`
  };
  auto loaded = std::make_shared<LayerProgress>();
  struct CopyTiming {  // written by the loader before its last layer is marked done
    double ms = 0;
    uint64_t bytes = 0;
  };
  auto copy_timing = std::make_shared<CopyTiming>();
  std::future<Opened> opened;
  if (first_loaded >= plan_chunks.size()) {
    loaded->Set(layers);
  } else {
    std::vector<std::pair<ChunkKey, int64_t>> to_open;  // key, tokens used
    for (size_t j = first_loaded; j < plan_chunks.size(); ++j) to_open.emplace_back(page_chunks[j].key, plan_chunks[j].tokens);
    auto promise = std::make_shared<std::promise<Opened>>();
    opened = promise->get_future();
    const std::vector<int32_t> pages(s.kv->lease()->pages().begin() + static_cast<long>(first_loaded),
                                     s.kv->lease()->pages().end());
    loader.Post([this, ns = s.ns, to_open, pages, promise, loaded, copy_timing, layers] {
      std::vector<std::pair<ChunkReader, int32_t>> readers;
      bool promised = false;
      try {
        Opened o;
        for (size_t i = 0; i < to_open.size(); ++i) {
          const auto t0 = Clock::now();
          auto r = opt.store->OpenChunk(ns, to_open[i].first);
          if (!r.ok()) break;  // gone or unreadable since the lookup: recompute from here
          if (r->served_from() == Tier::kDisk || r->served_from() == Tier::kCluster) {
            planner.ObserveRead(r->served_from(), r->size(), MsSince(t0) / 1e3);
          }
          o.served.emplace_back(r->served_from(), to_open[i].second);
          o.tokens += to_open[i].second;
          readers.emplace_back(std::move(r.value()), pages[i]);
        }
        promise->set_value(o);
        promised = true;
        const auto copy_start = Clock::now();
        std::vector<LoadItem> items;
        uint64_t bytes = 0;
        for (const auto& [r, page] : readers) {
          items.push_back({&r, page});
          bytes += r.size();
        }
        for (int64_t l = 0; l < layers; ++l) {
          const bool last = l + 1 == layers;
          if (!transfer->LoadLayer(l, items).ok() || (last && !transfer->LoadsLanded().ok())) {
            (void)transfer->LoadsLanded();  // nothing in flight reads a reader about to unpin
            readers.clear();
            loaded->Fail(layers);
            return;
          }
          if (last) {
            readers.clear();  // landed: unpin before the compute may finish
            *copy_timing = {MsSince(copy_start), bytes};
            planner.ObserveCopy(bytes, copy_timing->ms / 1e3);
          }
          loaded->Set(l + 1);
        }
      } catch (...) {  // (out of memory): the prefill fails, nothing waits forever
        (void)transfer->LoadsLanded();
        readers.clear();
        if (!promised) promise->set_value(Opened{});
        loaded->Fail(layers);
      }
    });
  }
  // Leaving by an exception from here on: the loader has finished with the pages before they
  // can be freed, no save waits forever for a compute that will not come, and the device has
  // finished the compute that writes the pages.
  std::shared_ptr<LayerProgress> computed;
  const int unwinding = std::uncaught_exceptions();
  auto cleanup = [&] {
    if (computed) computed->Fail(layers);
    if (opened.valid()) opened.wait();
    loaded->WaitFor(layers - 1);
    (void)transfer->ComputeFinished();
  };
  struct OnUnwind {
    std::function<void()> fn;
    int count;
    ~OnUnwind() {
      if (std::uncaught_exceptions() > count) fn();
    }
  } on_unwind{cleanup, unwinding};
  s.result.lookup_ms = MsSince(lookup_start);

  // The head: recomputed while the tail loads (its chunks are stored: nothing to save).
  torch::Tensor head_logits;
  double head_ms = 0;
  if (head > 0) {
    std::vector<int64_t> head_ids(head);
    for (int64_t p = 0; p < head; ++p) head_ids[p] = s.TokenAt(p, c);
    const auto t0 = Clock::now();
    head_logits = model->Forward(torch::tensor(head_ids, torch::kInt64), 0, *s.kv, s.params.return_prompt_logits);
    if (transfer->asynchronous()) (void)transfer->ComputeFinished();  // time the device's work
    head_ms = MsSince(t0);
    planner.ObservePrefill(head, 0, head_ms / 1e3);
  }
  int64_t cached = head;
  std::vector<std::pair<Tier, int64_t>> served;  // tier and tokens of each loaded chunk
  if (opened.valid()) {
    const auto t0 = Clock::now();
    Opened o = opened.get();
    s.result.lookup_ms += MsSince(t0);
    served = std::move(o.served);
    cached += o.tokens;
  }
  // The last prompt token is always computed: its logits give the first output token.
  const int64_t start = std::min(cached, m - 1);
  if (start < cached) served.back().second -= cached - start;
  for (const auto& [tier, t] : served) {
    (tier == Tier::kCluster ? s.result.hit_tokens_t3
     : tier == Tier::kDisk  ? s.result.hit_tokens_t2
                            : s.result.hit_tokens_t1) += t;
    // The slowest tier: t3, then t2, then t1 (the enum's order).
    if (static_cast<uint8_t>(tier) > static_cast<uint8_t>(s.result.tier)) s.result.tier = tier;
  }
  s.result.hit_tokens = start - std::min(head, start);

  // Saver: the prompt's new KV, chunk by chunk, as each layer is computed.
  computed = std::make_shared<LayerProgress>();
  if (opt.store != nullptr && opt.save_prompt) ScheduleSave(s, start, m, computed);

  double wait_ms = 0;
  bool load_failed = false;
  // Where copies run on the device beside the compute, a layer's new KV is in its pages only
  // once the device has computed it: saves start after the whole pass (below).
  const bool saves_follow_layers = !transfer->asynchronous();
  s.kv->SetHooks(
      [&](int64_t l) {
        auto t0 = Clock::now();
        if (!loaded->WaitFor(l)) {
          load_failed = true;
        } else {
          transfer->ComputeAfterLoad(l);
        }
        wait_ms += MsSince(t0);
      },
      [&](int64_t l) {
        if (saves_follow_layers) computed->Set(l + 1);
      });
  std::vector<int64_t> ids(m - start);
  for (int64_t p = start; p < m; ++p) ids[p - start] = s.TokenAt(p, c);
  torch::Tensor logits;
  const auto forward_start = Clock::now();
  try {
    logits = model->Forward(torch::tensor(ids, torch::kInt64), start, *s.kv, s.params.return_prompt_logits);
  } catch (...) {
    s.kv->SetHooks(nullptr, nullptr);
    throw;
  }
  s.kv->SetHooks(nullptr, nullptr);
  // On a device the pass is done when the device says so (time it; saves wait for it too).
  const Status device_done = transfer->asynchronous() ? transfer->ComputeFinished() : Status::OK();
  s.result.forward_ms = MsSince(forward_start);
  // A forward that waited for loads measures compute; on a device whose copies run beside the
  // compute its stalls are inside forward_ms, so only a pass with nothing loaded says.
  if (!transfer->asynchronous() || copy_timing->bytes == 0) {
    planner.ObservePrefill(m - start, start, (s.result.forward_ms - wait_ms) / 1e3);
  }
  s.result.forward_ms += head_ms;
  if (load_failed || !device_done.ok()) {  // save nothing computed over a failed copy
    computed->Fail(layers);
    return load_failed ? Status::Corruption("cached KV could not be copied") : device_done;
  }
  computed->Set(layers);
  s.length = m;
  s.result.load_wait_ms = wait_ms;
  s.result.load_copy_ms = copy_timing->ms;  // the forward waited for the last layer: written
  s.result.loaded_bytes = copy_timing->bytes;
  s.result.prompt_tokens = m;
  s.result.computed_tokens = m - start + std::min(head, start);
  s.result.dropped_tokens = dropped;
  s.next_token = Sample(s, logits[logits.size(0) - 1]);
  s.result.output_tokens.push_back(s.next_token);
  s.result.ttft_ms = MsSince(s.submitted);
  s.result.prompt_logits = head_logits.defined() && s.params.return_prompt_logits ? torch::cat({head_logits, logits}) : logits;
  Emitted(s);
  return Status::OK();
}

// The cached chunks for pages 0, 1, ... (new positions), by their original keys. After a
// context overflow the head and the kept tail are looked up separately, the tail by its
// chain from the last dropped chunk, so chunks in the dropped gap need not be cached.
std::vector<CachedChunk> Engine::Impl::CachedPages(const Sequence& s, int64_t dropped) {
  const int64_t c = opt.chunk_tokens;
  const std::span<const uint32_t> orig(s.orig);
  if (dropped == 0) return opt.store->Lookup(s.ns, orig).chunks;
  const int64_t head = s.head_chunks * c, tail = head + dropped;
  std::vector<CachedChunk> pages;
  if (head > 0) pages = opt.store->Lookup(s.ns, orig.first(head)).chunks;
  if (static_cast<int64_t>(pages.size()) != s.head_chunks) return pages;  // the head is not all cached
  const ChunkKey parent = ChunkKeys(s.ns, orig.first(tail), /*include_partial=*/false).back().key;
  auto rest = opt.store->LookupFrom(s.ns, parent, orig.subspan(tail)).chunks;
  pages.insert(pages.end(), rest.begin(), rest.end());
  return pages;
}

void Engine::Impl::ScheduleSave(Sequence& s, int64_t from, int64_t to, std::shared_ptr<LayerProgress> computed) {
  const int64_t c = opt.chunk_tokens;
  if (to <= from) return;
  int64_t first = from / c, last = (to - 1) / c;
  // After a context overflow, KV after the gap was computed without the dropped tokens: under
  // the original keys (which name the whole prefix) a later request that fits would take it
  // as exact. Only the head, computed in its true context, is saved.
  if (s.dropped_chunks > 0) last = std::min(last, s.head_chunks - 1);
  if (last < first) return;
  // Chain keys of the original stream up to the last chunk's parent.
  const int64_t last_oc = s.OrigChunk(last);
  auto keys = ChunkKeys(s.ns, std::span(s.orig).first(static_cast<size_t>(last_oc * c)), /*include_partial=*/false);
  struct Item {
    ChunkWriter writer;
    int32_t page;
    uint32_t tokens;
  };
  auto items = std::make_shared<std::vector<Item>>();
  for (int64_t j = first; j <= last; ++j) {
    const int64_t oc = s.OrigChunk(j);
    const auto t = static_cast<uint32_t>(std::min(c, to - j * c));
    const ChunkKey parent = oc == 0 ? s.ns.id() : keys[oc - 1].key;
    auto w = opt.store->BeginPut(s.ns, parent, std::span(s.orig).subspan(static_cast<size_t>(oc * c), t));
    if (!w.ok()) break;  // T1 full of pinned chunks: later chunks would be unreachable anyway
    if (w->exists()) continue;
    items->push_back({std::move(w.value()), s.kv->lease()->pages()[j], t});
  }
  if (items->empty()) return;
  const int64_t layers = model->config().num_layers;
  saver.Post([this, items, computed, lease = s.kv->lease(), layers] {
    std::vector<SaveItem> batch;
    for (Item& it : *items) batch.push_back({&it.writer, it.page, it.tokens});
    for (int64_t l = 0; l < layers; ++l) {
      if (!computed->WaitFor(l) || !transfer->SaveLayer(l, batch).ok()) {
        (void)transfer->SavesLanded();  // nothing in flight writes a slot about to be dropped
        return;  // the prefill failed, or a copy did: the writers drop uncommitted
      }
    }
    if (!transfer->SavesLanded().ok()) return;
    for (Item& it : *items) (void)it.writer.Commit();
  });
}

namespace {

// Samples from one fp32 CPU row of logits: argmax at temperature 0, else top_p (nucleus)
// sampling from the softmax at the temperature.
uint32_t SampleFrom(const torch::Tensor& row, const SamplingParams& params, std::mt19937_64& rng) {
  if (params.temperature <= 0.0f) return static_cast<uint32_t>(row.argmax().item<int64_t>());
  auto probs = torch::softmax(row / params.temperature, -1);
  auto [sorted, order] = probs.sort(/*dim=*/-1, /*descending=*/true);
  auto cum = sorted.cumsum(-1);
  const float* p = sorted.data_ptr<float>();
  const float* cp = cum.data_ptr<float>();
  int64_t keep = 1;
  while (keep < sorted.size(0) && cp[keep - 1] < params.top_p) ++keep;
  const double total = cp[keep - 1];
  double u = std::uniform_real_distribution<double>(0.0, total)(rng);
  for (int64_t i = 0; i < keep; ++i) {
    u -= p[i];
    if (u <= 0) return static_cast<uint32_t>(order[i].item<int64_t>());
  }
  return static_cast<uint32_t>(order[keep - 1].item<int64_t>());
}

// The model's log-probabilities at one step (log_softmax of the fp32 CPU row of logits): the
// sampled token's and the k most likely, ties ordered by id (NaN ranks last).
TokenLogprobs LogprobsOf(const torch::Tensor& row, uint32_t token, int k) {
  const torch::Tensor lp = torch::log_softmax(row, -1).contiguous();
  const float* p = lp.data_ptr<float>();
  const int64_t n = lp.size(0);
  TokenLogprobs out;
  out.token = token;
  out.logprob = static_cast<int64_t>(token) < n ? p[token] : -std::numeric_limits<float>::infinity();
  const int64_t top = std::min<int64_t>(k, n);
  if (top == 0) return out;
  auto key = [p](uint32_t id) { return std::isnan(p[id]) ? -std::numeric_limits<float>::infinity() : p[id]; };
  std::vector<uint32_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), 0u);
  std::partial_sort(ids.begin(), ids.begin() + top, ids.end(), [&](uint32_t a, uint32_t b) {
    const float ka = key(a), kb = key(b);
    return ka > kb || (ka == kb && a < b);
  });
  out.top.reserve(static_cast<size_t>(top));
  for (int64_t i = 0; i < top; ++i) out.top.emplace_back(ids[i], p[ids[i]]);
  return out;
}

}  // namespace

uint32_t Engine::Impl::Sample(Sequence& s, const torch::Tensor& logits) {
  auto row = logits.to(torch::kCPU, torch::kFloat32).contiguous();
  const uint32_t token = SampleFrom(row, s.params, s.rng);
  if (s.params.top_logprobs >= 0) s.result.logprobs.push_back(LogprobsOf(row, token, s.params.top_logprobs));
  return token;
}

void Engine::Impl::DecodeStep() {
  std::vector<int64_t> ids, starts;
  std::vector<KvAccess*> kvs;
  for (auto& s : running) {
    ids.push_back(s->next_token);
    starts.push_back(s->length);
    kvs.push_back(s->kv.get());
  }
  auto logits = model->DecodeBatch(torch::tensor(ids, torch::kInt64), starts, kvs);
  for (size_t i = 0; i < running.size(); ++i) {
    Sequence& s = *running[i];
    s.orig.push_back(s.next_token);  // its KV is in the pool now
    ++s.length;
    s.next_token = Sample(s, logits[static_cast<int64_t>(i)]);
    s.result.output_tokens.push_back(s.next_token);
    Emitted(s);
  }
  for (size_t i = 0; i < running.size();) {
    if (running[i]->stopped) {
      Finish(*running[i]);
      running.erase(running.begin() + static_cast<long>(i));
    } else {
      ++i;
    }
  }
}

void Engine::Impl::Emitted(Sequence& s) {
  if (s.params.on_logprobs && s.params.top_logprobs >= 0) s.params.on_logprobs(s.result.logprobs.back());
  if (s.params.on_token) s.params.on_token(s.next_token);
  const auto& stop = s.params.stop_tokens;
  s.stopped = std::find(stop.begin(), stop.end(), s.next_token) != stop.end() ||
              static_cast<int64_t>(s.result.output_tokens.size()) >= s.params.max_new_tokens ||
              (s.params.cancel && s.params.cancel->load(std::memory_order_relaxed));
}

void Engine::Impl::Finish(Sequence& s) {
  if (opt.store != nullptr && opt.save_generated && s.length > s.prompt_len) {
    auto all = std::make_shared<LayerProgress>();
    all->Set(model->config().num_layers);
    ScheduleSave(s, s.prompt_len, s.length, all);
  }
  s.result.total_ms = MsSince(s.submitted);
  s.kv.reset();  // pending saves keep the pages until they are done
  if (s.done) s.done(std::move(s.result));
}

Engine::Engine(std::shared_ptr<const LlamaModel> model, EngineOptions options)
    : ns_(options.tenant, model->weights().fingerprint,
          LayoutFor(model->config(), model->dtype(), options.chunk_tokens)),
      options_(options) {
  if (options.chunk_tokens <= 0 || options.max_context <= 0 || options.kv_pool_tokens < options.chunk_tokens) {
    throw std::invalid_argument("EngineOptions: chunk_tokens, max_context and kv_pool_tokens must be positive");
  }
  impl_ = std::make_unique<Impl>(std::move(model), options_, ns_);
}

Engine::~Engine() { WaitForSaves(); }

const planner::LoadPlanner& Engine::load_planner() const { return impl_->planner; }

uint64_t Engine::Submit(std::vector<uint32_t> prompt, SamplingParams params, std::function<void(RequestResult)> done) {
  auto s = std::make_unique<Sequence>(params.tenant.empty() || params.tenant == ns_.tenant()
                                          ? ns_
                                          : Namespace(params.tenant, ns_.model_fingerprint(), ns_.layout()));
  s->orig = std::move(prompt);
  s->params = std::move(params);
  s->done = std::move(done);
  s->submitted = Clock::now();
  std::lock_guard<std::mutex> lock(impl_->queue_mu);
  s->id = impl_->next_id++;
  s->result.id = s->id;
  s->rng.seed(s->params.fixed_seed ? s->params.seed : s->params.seed ^ (s->id * 0x9e3779b97f4a7c15ull));
  const uint64_t id = s->id;
  impl_->queue.push_back(std::move(s));
  return id;
}

bool Engine::Step() {
  bool did = false;
  while (static_cast<int64_t>(impl_->running.size()) < options_.max_batch) {
    std::unique_ptr<Sequence> s;
    {
      std::lock_guard<std::mutex> lock(impl_->queue_mu);
      if (impl_->queue.empty()) break;
      s = std::move(impl_->queue.front());
      impl_->queue.pop_front();
    }
    if (options_.store != nullptr && options_.hint_window > 0 && options_.load) {
      // This request first (its chunks must not be evicted before its lookup pins them), then
      // the ones behind it: their cached KV should be in DRAM when they run.
      // Only queued requests of the same tenant: a hint names one namespace.
      std::vector<std::vector<uint32_t>> next;
      {
        std::lock_guard<std::mutex> lock(impl_->queue_mu);
        for (const auto& q : impl_->queue) {
          if (next.size() == options_.hint_window) break;
          if (q->ns.id() == s->ns.id()) next.push_back(q->orig);
        }
      }
      std::vector<std::span<const uint32_t>> window{std::span<const uint32_t>(s->orig)};
      window.insert(window.end(), next.begin(), next.end());
      options_.store->Hint(s->ns, window);
    }
    auto prefill = [&]() -> Status {
      try {
        return impl_->Prefill(*s);
      } catch (const std::exception& e) {  // a LibTorch error: fail this request, not the loop
        s->kv.reset();
        return Status::InvalidArgument(std::string("prefill failed: ") + e.what());
      }
    };
    Status st = prefill();
    if (st.code() == Code::kResourceExhausted && impl_->running.empty()) {
      s->kv.reset();
      impl_->saver.WaitIdle();  // pages may be held only by saves still copying out
      st = prefill();
    }
    if (st.code() == Code::kResourceExhausted && !impl_->running.empty()) {
      s->kv.reset();
      std::lock_guard<std::mutex> lock(impl_->queue_mu);
      impl_->queue.push_front(std::move(s));  // wait for running requests to free pages
      break;
    }
    did = true;
    if (!st.ok()) {
      s->result.status = st;
      s->kv.reset();
      if (s->done) s->done(std::move(s->result));
      continue;
    }
    if (s->stopped) {
      impl_->Finish(*s);
    } else {
      impl_->running.push_back(std::move(s));
    }
  }
  if (!impl_->running.empty()) {
    try {
      impl_->DecodeStep();
    } catch (const std::exception& e) {  // a LibTorch error: fail the running requests, not the loop
      for (auto& r : impl_->running) {
        r->result.status = Status::InvalidArgument(std::string("decode failed: ") + e.what());
        impl_->Finish(*r);
      }
      impl_->running.clear();
    }
    did = true;
  }
  return did;
}

void Engine::RunUntilIdle() {
  while (Step()) {
  }
}

RequestResult Engine::Generate(std::vector<uint32_t> prompt, SamplingParams params) {
  RequestResult out;
  Submit(std::move(prompt), std::move(params), [&](RequestResult r) { out = std::move(r); });
  RunUntilIdle();
  return out;
}

std::vector<std::vector<uint32_t>> Engine::LookAhead(size_t n) const {
  std::lock_guard<std::mutex> lock(impl_->queue_mu);
  std::vector<std::vector<uint32_t>> out;
  for (size_t i = 0; i < n && i < impl_->queue.size(); ++i) out.push_back(impl_->queue[i]->orig);
  return out;
}

void Engine::WaitForSaves() {
  impl_->loader.WaitIdle();
  impl_->saver.WaitIdle();
}

}  // namespace kvault::engine
