#include "engine/engine.h"

#include <algorithm>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>

#include "engine/kv_connector.h"
#include "engine/kv_pool.h"
#include "engine/kv_transfer.h"
#include "engine/sampling.h"
#include "engine/sequence.h"

namespace kvault::engine {
namespace {

DType StoreDType(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return DType::kF32;
    case torch::kBFloat16: return DType::kBF16;
    case torch::kHalf: return DType::kF16;
    default: throw std::invalid_argument("unsupported KV dtype");
  }
}

planner::LoadPlanner::Options PlannerOptions(const EngineOptions& o, const ModelConfig& config) {
  planner::LoadPlanner::Options p = o.planner;
  p.layers = static_cast<int>(config.num_layers);
  return p;
}

std::unique_ptr<KvTransfer> TransferFor(KvPool& pool, const KvLayout& layout, Store* store) {
  auto t = MakeKvTransfer(pool, layout, store);
  if (!t.ok()) throw std::invalid_argument("the KV pool's device: " + t.status().ToString());
  return std::move(t.value());
}

// The token ids of new positions [from, to) of s.
torch::Tensor TokenIds(const Sequence& s, int64_t from, int64_t to, int64_t chunk_tokens) {
  std::vector<int64_t> ids(static_cast<size_t>(to - from));
  for (int64_t p = from; p < to; ++p) ids[static_cast<size_t>(p - from)] = s.TokenAt(p, chunk_tokens);
  return torch::tensor(ids, torch::kInt64);
}

}  // namespace

KvLayout LayoutFor(const ModelConfig& config, torch::ScalarType dtype, int64_t chunk_tokens) {
  return KvLayout{static_cast<uint32_t>(config.num_layers), static_cast<uint32_t>(config.num_kv_heads),
                  static_cast<uint32_t>(config.head_dim), StoreDType(dtype), static_cast<uint32_t>(chunk_tokens),
                  RopeMode::kPreRope};
}

struct Engine::Impl {
  Impl(std::shared_ptr<const LlamaModel> m, const EngineOptions& o, const Namespace& n)
      : model(std::move(m)),
        opt(o),
        ns(n),
        pool(model->config(), model->dtype(), model->device(), o.chunk_tokens,
             std::max<int64_t>(1, o.kv_pool_tokens / o.chunk_tokens)),
        planner(PlannerOptions(o, model->config())),
        connector(opt, planner),
        worker(o.store, TransferFor(pool, n.layout(), o.store), model->config().num_layers) {}

  // A prefill, over one or more steps (chunked prefill). StartPrefill checks the request, fits
  // it into the context window, leases its pages and computes its first piece over its cached
  // prefix; ContinuePrefill computes the next piece. Each computes at most `budget` new tokens
  // (a recomputed head may overrun it) and adds the tokens it computed to `computed`. When
  // s.length reaches s.prompt_len, FinishPrefill samples the first token.
  Status StartPrefill(Sequence& s, int64_t budget, int64_t& computed);
  Status ContinuePrefill(Sequence& s, int64_t budget, int64_t& computed);
  void FinishPrefill(Sequence& s);
  Status CheckRequest(const Sequence& s) const;
  Status FitContext(Sequence& s) const;
  Status LeasePages(Sequence& s);
  Status ComputeFirstPiece(Sequence& s, const std::shared_ptr<PrefillMeasurements>& measured, int64_t budget,
                           int64_t& computed);
  torch::Tensor RecomputeHead(Sequence& s, int64_t head, PrefillKvIo& io, double& ms);
  int64_t AccountCachedPrefix(Sequence& s, int64_t head, PrefillKvIo& io);
  // Where the saves may reach once new positions [0, end) are computed: the last whole chunk's
  // end, or the prompt's end (its partial last chunk is saved with it).
  int64_t SavesBoundary(const Sequence& s, int64_t end) const;
  // Before s's prefill: hints the store with s and the queued requests behind it.
  void HintQueue(const Sequence& s);
  void DecodeStep();
  void Finish(Sequence& s);
  // After s.next_token joined the output: streams it, and decides whether s stops.
  void Emitted(Sequence& s);
  // Samples the next token from one row of logits; records its log-probabilities in s.result
  // when the request asked for them.
  uint32_t Sample(Sequence& s, const torch::Tensor& logits);

  std::shared_ptr<const LlamaModel> model;
  const EngineOptions opt;
  const Namespace ns;
  KvPool pool;

  mutable std::mutex queue_mu;
  std::deque<std::unique_ptr<Sequence>> queue;  // GUARDED_BY(queue_mu); popped by the engine loop only
  uint64_t next_id = 1;                          // GUARDED_BY(queue_mu)
  std::unique_ptr<Sequence> prefilling;            // engine loop thread only: a prefill begun, not done
  std::vector<std::unique_ptr<Sequence>> running;  // engine loop thread only

  planner::LoadPlanner planner;    // asked and taught by the connector's scheduler side only
  KvConnectorScheduler connector;  // the store's scheduler side: keys, hints, lookup, plan, saves begun
  KvConnectorWorker worker;        // the store's worker side: loads and saves, layer by layer (after the pool)
};

// A prefill's first step: check the request, fit it into the context window and lease its
// pages; compute its first piece over its cached prefix (the connector's two sides); let the
// planner learn what this step measured.
Status Engine::Impl::StartPrefill(Sequence& s, int64_t budget, int64_t& computed) {
  KVAULT_RETURN_IF_ERROR(CheckRequest(s));
  KVAULT_RETURN_IF_ERROR(FitContext(s));
  KVAULT_RETURN_IF_ERROR(LeasePages(s));
  auto measured = std::make_shared<PrefillMeasurements>();
  Status st;
  try {
    st = ComputeFirstPiece(s, measured, budget, computed);
  } catch (...) {  // the worker side is done with the prefill: what it measured is complete
    connector.Learn(*measured);
    throw;
  }
  connector.Learn(*measured);
  return st;
}

// A later piece: the cached prefix and the earlier pieces are in the pages, nothing loads; the
// chunks this piece completes are saved once the device has computed them.
Status Engine::Impl::ContinuePrefill(Sequence& s, int64_t budget, int64_t& computed) {
  const int64_t from = s.length, to = from + std::min(s.prompt_len - from, budget);
  const auto t0 = Clock::now();
  s.piece_logits.push_back(
      model->Forward(TokenIds(s, from, to, opt.chunk_tokens), from, *s.kv, s.params.return_prompt_logits));
  KVAULT_RETURN_IF_ERROR(worker.ComputeFinished());
  const double ms = MsSince(t0);
  s.result.forward_ms += ms;
  PrefillMeasurements pass;
  pass.passes.push_back({to - from, from, ms / 1e3});
  connector.Learn(pass);
  s.length = to;
  computed += to - from;
  const int64_t saves_to = SavesBoundary(s, to);
  if (connector.saves_prompt() && saves_to > s.saves_from) {
    worker.SaveComputed(connector.BeginSaves(s, s.saves_from, saves_to), s.kv->lease());
    s.saves_from = saves_to;
  }
  return Status::OK();
}

int64_t Engine::Impl::SavesBoundary(const Sequence& s, int64_t end) const {
  return end == s.prompt_len ? end : end / opt.chunk_tokens * opt.chunk_tokens;
}

Status Engine::Impl::CheckRequest(const Sequence& s) const {
  if (s.orig.empty()) return Status::InvalidArgument("empty prompt");
  if (s.params.max_new_tokens < 1) return Status::InvalidArgument("max_new_tokens must be at least 1");
  const int64_t vocab = model->config().vocab_size;
  for (uint32_t t : s.orig) {
    if (t >= vocab) return Status::InvalidArgument("token id " + std::to_string(t) + " outside the vocabulary");
  }
  return Status::OK();
}

// Context overflow: keep a head (whole chunks), drop whole chunks after it, keep the rest.
Status Engine::Impl::FitContext(Sequence& s) const {
  const int64_t c = opt.chunk_tokens;
  const auto n = static_cast<int64_t>(s.orig.size());
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
  s.prompt_len = n - dropped;
  return Status::OK();
}

// Pages for the kept prompt and every token the request may generate.
Status Engine::Impl::LeasePages(Sequence& s) {
  const int64_t c = opt.chunk_tokens;
  auto pages = pool.Allocate((s.prompt_len + s.params.max_new_tokens + c - 1) / c);
  if (!pages) return Status::ResourceExhausted("KV pool full");
  s.kv = std::make_unique<SequenceKv>(std::make_shared<PageLease>(&pool, std::move(*pages)));
  return Status::OK();
}

// The prompt's first piece: its KV and logits. The scheduler side matches the cached prefix
// once and plans it; the worker side loads the planned chunks while a planned head is
// recomputed, then the first `budget` new tokens compute layer by layer as the loaded layers
// land, the new KV of the chunks they complete saved as each layer is done.
Status Engine::Impl::ComputeFirstPiece(Sequence& s, const std::shared_ptr<PrefillMeasurements>& measured,
                                       int64_t budget, int64_t& computed) {
  const int64_t m = s.prompt_len;
  // 1. Match the cached prefix (once) and plan it; start loading the chunks to load.
  const auto lookup_start = Clock::now();
  PrefillPlan plan = connector.MatchAndPlan(s);
  s.result.plan = plan.plan;
  const int64_t head = plan.head_tokens;
  const std::unique_ptr<PrefillKvIo> io = worker.StartLoads(s.ns, std::move(plan.loads), measured);
  s.result.lookup_ms = MsSince(lookup_start);

  // 2. Recompute a planned head while the tail loads; then take what opened.
  double head_ms = 0;
  if (head > 0) s.head_logits = RecomputeHead(s, head, *io, head_ms);
  const int64_t start = AccountCachedPrefix(s, head, *io);
  const int64_t end = start + std::min(m - start, budget);  // budget may be the maximum

  // 3. Begin the saves of the chunks this piece completes; their layers go out as they compute.
  const int64_t saves_to = SavesBoundary(s, end);
  if (connector.saves_prompt()) io->StartSaves(connector.BeginSaves(s, start, saves_to), s.kv->lease());
  s.saves_from = std::max(start, saves_to);

  // 4. Compute the piece: layer l waits for its loaded KV, then releases its new KV to the saver.
  const torch::Tensor ids = TokenIds(s, start, end, opt.chunk_tokens);
  const auto forward_start = Clock::now();
  {
    PrefillKvIo::ForwardHooks hooks(*io, *s.kv);
    s.piece_logits.push_back(model->Forward(ids, start, *s.kv, s.params.return_prompt_logits));
  }
  // 5. Close the pass: the saves go on with every layer, or drop after a failed load.
  const Status device_done = io->PassFinished();
  s.result.forward_ms = MsSince(forward_start);
  io->RecordPass(end - start, start, s.result.forward_ms);
  s.result.forward_ms += head_ms;
  if (io->load_failed() || !device_done.ok()) {  // save nothing computed over a failed copy
    io->EndSaves(false);
    return io->load_failed() ? Status::Corruption("cached KV could not be copied") : device_done;
  }
  io->EndSaves(true);
  s.length = end;
  computed += end - start + std::min(head, start);
  s.result.load_wait_ms = io->load_wait_ms();
  s.result.load_copy_ms = measured->copy_ms;  // the pass waited for the last layer: written
  s.result.loaded_bytes = measured->copied_bytes;
  s.result.prompt_tokens = m;
  s.result.computed_tokens = m - start + std::min(head, start);
  s.result.dropped_tokens = s.dropped_chunks * opt.chunk_tokens;
  return Status::OK();
}

// A cached head recomputed while the tail loads: a pass of its own (its chunks are stored:
// nothing to save).
torch::Tensor Engine::Impl::RecomputeHead(Sequence& s, int64_t head, PrefillKvIo& io, double& ms) {
  const torch::Tensor ids = TokenIds(s, 0, head, opt.chunk_tokens);
  const auto t0 = Clock::now();
  torch::Tensor logits = model->Forward(ids, 0, *s.kv, s.params.return_prompt_logits);
  ms = io.HeadComputed(head, t0);
  return logits;
}

// Waits for the loader to open its chunks and accounts what the prompt reuses (hits by tier,
// the slowest tier). Returns the first position to compute: after the head and the opened
// chunks, but the last prompt token is always computed (its logits give the first output).
int64_t Engine::Impl::AccountCachedPrefix(Sequence& s, int64_t head, PrefillKvIo& io) {
  int64_t cached = head;
  std::vector<std::pair<Tier, int64_t>> served;  // tier and tokens of each loaded chunk
  if (io.loading()) {
    const auto t0 = Clock::now();
    OpenedPrefix o = io.WaitOpened();
    s.result.lookup_ms += MsSince(t0);
    served = std::move(o.served);
    cached += o.tokens;
  }
  const int64_t start = std::min(cached, s.prompt_len - 1);
  if (start < cached) served.back().second -= cached - start;
  for (const auto& [tier, t] : served) {
    (tier == Tier::kT3 ? s.result.hit_tokens_t3
     : tier == Tier::kT2  ? s.result.hit_tokens_t2
                            : s.result.hit_tokens_t1) += t;
    // The slowest tier: t3, then t2, then t1 (the enum's order).
    if (static_cast<uint8_t>(tier) > static_cast<uint8_t>(s.result.tier)) s.result.tier = tier;
  }
  s.result.hit_tokens = start - std::min(head, start);
  return start;
}

void Engine::Impl::FinishPrefill(Sequence& s) {
  const torch::Tensor& last = s.piece_logits.back();
  s.next_token = Sample(s, last[last.size(0) - 1]);
  s.result.output_tokens.push_back(s.next_token);
  s.result.ttft_ms = MsSince(s.submitted);
  if (s.params.return_prompt_logits) {
    std::vector<torch::Tensor> rows;
    if (s.head_logits.defined()) rows.push_back(s.head_logits);
    rows.insert(rows.end(), s.piece_logits.begin(), s.piece_logits.end());
    s.result.prompt_logits = rows.size() == 1 ? rows[0] : torch::cat(rows);
  } else {
    s.result.prompt_logits = last;
  }
  s.head_logits = torch::Tensor();
  s.piece_logits.clear();
  Emitted(s);
}

void Engine::Impl::HintQueue(const Sequence& s) {
  const size_t window = connector.hint_window();
  if (window == 0) return;
  // Only queued requests of the same tenant: a hint names one namespace. Their keys do not
  // change while they are queued, and only this thread takes them off the queue: the pointers
  // stay valid after the lock.
  std::vector<const KeyedTokens*> behind;
  {
    std::lock_guard<std::mutex> lock(queue_mu);
    for (const auto& q : queue) {
      if (behind.size() == window) break;
      if (q->ns.id() == s.ns.id()) behind.push_back(&q->keys);
    }
  }
  connector.Hint(s, behind);
}

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
  if (connector.saves_generated() && s.length > s.prompt_len) {
    worker.SaveComputed(connector.BeginSaves(s, s.prompt_len, s.length), s.kv->lease());
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
  impl_->connector.KeyPrompt(*s);  // before it is queued: the keys never change after
  std::lock_guard<std::mutex> lock(impl_->queue_mu);
  s->id = impl_->next_id++;
  s->result.id = s->id;
  s->rng.seed(s->params.fixed_seed ? s->params.seed : s->params.seed ^ (s->id * 0x9e3779b97f4a7c15ull));
  const uint64_t id = s->id;
  impl_->queue.push_back(std::move(s));
  return id;
}

// One iteration: prefill (a piece of the prefill in progress, then queued requests, in arrival
// order, while the budget of computed tokens lasts and the batch has room), then one decode
// step. A prefill that finishes joins the running requests; one that fails ends at once.
bool Engine::Step() {
  Impl& im = *impl_;
  bool did = false;
  int64_t budget = options_.prefill_chunk_tokens > 0 ? options_.prefill_chunk_tokens
                                                     : std::numeric_limits<int64_t>::max();
  auto end_request = [&](std::unique_ptr<Sequence> s, Status st) {
    s->result.status = std::move(st);
    s->kv.reset();
    if (s->done) s->done(std::move(s->result));
  };
  while (budget > 0) {
    int64_t computed = 0;
    Status st;
    if (im.prefilling) {  // the prefill in progress: its next piece
      if (im.prefilling->params.cancel && im.prefilling->params.cancel->load(std::memory_order_relaxed)) {
        end_request(std::move(im.prefilling), Status::OK());  // the client went away: no tokens
        did = true;
        continue;
      }
      try {
        st = im.ContinuePrefill(*im.prefilling, budget, computed);
      } catch (const std::exception& e) {  // a LibTorch error: fail this request, not the loop
        st = Status::InvalidArgument(std::string("prefill failed: ") + e.what());
      }
    } else {  // a queued request, while the batch has room
      if (static_cast<int64_t>(im.running.size()) >= options_.max_batch) break;
      {
        std::lock_guard<std::mutex> lock(im.queue_mu);
        if (im.queue.empty()) break;
        im.prefilling = std::move(im.queue.front());
        im.queue.pop_front();
      }
      Sequence& s = *im.prefilling;
      im.HintQueue(s);
      auto start = [&]() -> Status {
        try {
          return im.StartPrefill(s, budget, computed);
        } catch (const std::exception& e) {  // a LibTorch error: fail this request, not the loop
          s.kv.reset();
          return Status::InvalidArgument(std::string("prefill failed: ") + e.what());
        }
      };
      st = start();
      if (st.code() == Code::kResourceExhausted && im.running.empty()) {
        s.kv.reset();
        im.worker.WaitForSaves();  // pages may be held only by saves still copying out
        st = start();
      }
      if (st.code() == Code::kResourceExhausted && !im.running.empty()) {
        s.kv.reset();
        std::lock_guard<std::mutex> lock(im.queue_mu);
        im.queue.push_front(std::move(im.prefilling));  // wait for running requests to free pages
        break;
      }
    }
    did = true;
    budget -= std::max<int64_t>(computed, 1);
    if (!st.ok()) {
      end_request(std::move(im.prefilling), st);
      continue;
    }
    if (im.prefilling->length < im.prefilling->prompt_len) continue;  // more pieces to come
    im.FinishPrefill(*im.prefilling);
    if (im.prefilling->stopped) {
      im.Finish(*im.prefilling);
      im.prefilling.reset();
    } else {
      im.running.push_back(std::move(im.prefilling));
    }
  }
  if (!im.running.empty()) {
    try {
      im.DecodeStep();
    } catch (const std::exception& e) {  // a LibTorch error: fail the running requests, not the loop
      for (auto& r : im.running) {
        r->result.status = Status::InvalidArgument(std::string("decode failed: ") + e.what());
        im.Finish(*r);
      }
      im.running.clear();
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

void Engine::WaitForSaves() { impl_->worker.WaitForSaves(); }

}  // namespace kvault::engine
