#include "openai/server.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "http/http_server.h"
#include "metrics/latency_histogram.h"
#include "metrics/prometheus_text.h"
#include "openai/openai_api.h"
#include "openai/prompt.h"
#include "store/mutex.h"

namespace kvault::openai {
namespace {

using Clock = std::chrono::steady_clock;
using tokenizer::CompleteUtf8PrefixLength;
using tokenizer::IsValidUtf8;
using tokenizer::SanitizeUtf8;

// A served model as /v1/models lists it: OpenAI's fields, and kvault's (its state and where
// its weights came from).
nlohmann::ordered_json ServedModelObject(const ModelStatus& m, int64_t created) {
  nlohmann::ordered_json k;
  k["state"] = ModelStateName(m.state);
  k["fingerprint"] = m.fingerprint;
  k["weights_bytes"] = m.weights_bytes;
  k["weights_from"] = m.weights_from;
  k["last_load_s"] = m.last_load_s;
  k["loads"] = m.loads;
  k["spec"] = m.spec;
  k["queued"] = m.queued;
  k["in_flight"] = m.in_flight;
  k["draining"] = m.draining;
  nlohmann::ordered_json o;
  o["id"] = m.id;
  o["object"] = "model";
  o["created"] = created;
  o["owned_by"] = "kvault";
  o["kvault"] = std::move(k);
  return o;
}

std::string ServedModelJson(const ModelStatus& m, int64_t created) { return ServedModelObject(m, created).dump(); }

std::string ServedModelsJson(const std::vector<ModelStatus>& models, int64_t created) {
  nlohmann::ordered_json list;
  list["object"] = "list";
  list["data"] = nlohmann::ordered_json::array();
  for (const ModelStatus& m : models) list["data"].push_back(ServedModelObject(m, created));
  return list.dump();
}

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Turns a request's tokens into text deltas: stops at the stop tokens (not shown) and the
// stop strings (cut before them), never splits a UTF-8 character, and holds back a tail that
// could still become a stop string.
class TextAssembler {
 public:
  TextAssembler(const tokenizer::Tokenizer& tok, std::vector<uint32_t> stop_ids, std::vector<std::string> stop_strings)
      : decoder_(tok, /*skip_special=*/true), stop_ids_(std::move(stop_ids)), stop_strings_(std::move(stop_strings)) {}

  // Adds one token; returns the text that may be shown now. Sets finished() on a stop.
  // *part_of_answer (if given): whether the token belongs to the answer (it came before the
  // end and is not a stop token), i.e. gets a logprobs entry.
  std::string Push(uint32_t id, bool* part_of_answer = nullptr) {
    if (part_of_answer != nullptr) *part_of_answer = false;
    if (finished_) return {};
    ++completion_tokens_;
    if (std::find(stop_ids_.begin(), stop_ids_.end(), id) != stop_ids_.end()) {
      finished_ = true;
      reason_ = "stop";
      return Release(/*all=*/true);
    }
    if (part_of_answer != nullptr) *part_of_answer = true;
    full_ += decoder_.Push(id);
    return Release(false);
  }
  // The end of generation (length or cancel): the rest of the text.
  std::string Finish() {
    if (!finished_) full_ += decoder_.Finish();
    std::string out = Release(true);
    finished_ = true;
    return out;
  }
  bool finished() const { return finished_; }
  const std::string& reason() const { return reason_; }
  int64_t completion_tokens() const { return completion_tokens_; }
  const std::string& text() const { return full_; }

 private:
  std::string Release(bool all) {
    for (const std::string& s : stop_strings_) {
      const size_t at = full_.find(s, searched_ > s.size() ? searched_ - s.size() : 0);
      if (at != std::string::npos) {
        full_.resize(at);
        finished_ = true;
        reason_ = "stop";
        all = true;
      }
    }
    searched_ = full_.size();
    size_t keep = 0;  // the longest tail that is a proper prefix of a stop string
    if (!all) {
      for (const std::string& s : stop_strings_) {
        for (size_t n = std::min(s.size() - 1, full_.size()); n > keep; --n) {
          if (full_.compare(full_.size() - n, n, s, 0, n) == 0) {
            keep = n;
            break;
          }
        }
      }
    }
    const size_t upto = full_.size() - keep;
    std::string out = upto > emitted_ ? full_.substr(emitted_, upto - emitted_) : std::string();
    emitted_ = std::max(emitted_, upto);
    return out;
  }

  tokenizer::StreamDecoder decoder_;
  const std::vector<uint32_t> stop_ids_;
  const std::vector<std::string> stop_strings_;
  std::string full_;      // the text so far (cut at a stop string)
  size_t emitted_ = 0;    // bytes of full_ handed out
  size_t searched_ = 0;   // bytes of full_ already searched for stop strings
  bool finished_ = false;
  std::string reason_ = "length";
  int64_t completion_tokens_ = 0;
};

// Turns the engine's log-probabilities of answer tokens into response entries: each token's
// bytes as the answer's text has them (a SentencePiece dummy prefix dropped at the start;
// special tokens under their spelling, though the text skips them), and its offset in
// characters in the text: the index of the character its first byte falls in (invalid bytes
// count as the U+FFFD they become).
class LogprobAssembler {
 public:
  explicit LogprobAssembler(const tokenizer::Tokenizer& tok) : tok_(tok) {}

  LogprobEntry Entry(const engine::TokenLogprobs& lp) {
    const bool at_start = !wrote_any_;
    LogprobEntry e;
    e.token = {Bytes(lp.token, at_start), lp.logprob};
    e.top.reserve(lp.top.size());
    for (const auto& [id, logprob] : lp.top) e.top.push_back({Bytes(id, at_start), logprob});
    // The character its first byte falls in: pending_ is the start of one character still
    // (valid, or one U+FFFD if what follows does not continue it).
    e.text_offset = chars_;
    if (!pending_.empty() && !e.token.bytes.empty()) {
      const std::string first = pending_ + e.token.bytes[0];
      if (CompleteUtf8PrefixLength(first) != 0 && !IsValidUtf8(first)) ++e.text_offset;  // pending_ ended before it
    }
    if (lp.token < tok_.vocab_size() && !tok_.IsSpecial(lp.token)) {
      wrote_any_ = true;
      pending_ += e.token.bytes;
      const size_t complete = CompleteUtf8PrefixLength(pending_);
      for (unsigned char b : SanitizeUtf8(std::string_view(pending_).substr(0, complete))) chars_ += (b & 0xC0) != 0x80;
      pending_.erase(0, complete);
    }
    return e;
  }

 private:
  std::string Bytes(uint32_t id, bool at_start) const {
    if (tok_.IsSpecial(id)) return std::string(tok_.TokenText(id));
    std::string out;
    tok_.AppendTokenBytes(id, at_start, &out);  // nothing for ids outside the vocabulary
    return out;
  }

  const tokenizer::Tokenizer& tok_;
  bool wrote_any_ = false;  // a token of the text was seen (the dummy prefix is behind us)
  std::string pending_;     // bytes of an unfinished character at the end of the text
  int64_t chars_ = 0;       // characters of the text before pending_
};

// The server's counters, shared with the engine's callbacks (which may outlive a request's
// connection, and the server object too). Thread-safe.
struct ServeCounters {
  std::atomic<uint64_t> requests{0}, errors_4xx{0}, errors_5xx{0}, prompt_tokens{0}, cached_tokens{0},
      completion_tokens{0}, active{0}, client_gone{0}, busy{0};
  // The planner's decisions for requests with a cached prefix, by kind (load, recompute,
  // split), and the cached tokens it chose to recompute.
  std::atomic<uint64_t> plans[3] = {0, 0, 0};
  std::atomic<uint64_t> recomputed_cached_tokens{0};
  LatencyHistogram ttft_seconds, request_seconds;

  // Requests handed to the model set whose end has not been reported, by the server's request
  // id: their cancel flags (Stop cancels them all).
  Mutex mu;
  std::unordered_map<uint64_t, std::shared_ptr<std::atomic<bool>>> inflight GUARDED_BY(mu);
  size_t Inflight() EXCLUDES(mu) {
    MutexLock lock(mu);
    return inflight.size();
  }
};

// One generation request between its HTTP connection and the engine. The engine thread hands
// over tokens and the result under `mu` and posts a Drain to the connection's strand (at most
// one pending); everything below "strand only" is touched on that strand alone.
class Generation : public std::enable_shared_from_this<Generation> {
 public:
  Generation(std::shared_ptr<ServeCounters> counters, std::shared_ptr<http::Responder> responder,
             const tokenizer::Tokenizer& tok, std::vector<uint32_t> stop_ids, GenerationRequest r, std::string id,
             bool want_logprobs)
      : counters_(std::move(counters)),
        responder_(std::move(responder)),
        r_(std::move(r)),
        id_(std::move(id)),
        created_(UnixNow()),
        want_logprobs_(want_logprobs),
        assembler_(tok, std::move(stop_ids), r_.stop),
        lp_assembler_(tok) {}

  const std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
  uint64_t request_id = 0;  // the server's (unique across models)

  // Engine thread.
  void OnToken(uint32_t t) {
    {
      MutexLock lock(mu_);
      tokens_.push_back(t);
    }
    Schedule();
  }
  void OnLogprobs(const engine::TokenLogprobs& lp) {
    MutexLock lock(mu_);
    logprobs_.push_back(lp);
  }
  void OnDone(engine::RequestResult result) {
    {
      MutexLock lock(mu_);
      result_ = std::move(result);
      done_ = true;
    }
    {
      MutexLock lock(counters_->mu);
      counters_->inflight.erase(request_id);
    }
    if (!Schedule()) {  // the connection is gone: nobody will drain, account here
      MutexLock lock(mu_);
      Account(result_, static_cast<int64_t>(result_.output_tokens.size()));
    }
  }

  // Strand: the client left (or a deadline closed the connection) before the response ended.
  void OnClientGone() {
    ++counters_->client_gone;
    cancel->store(true);
  }

 private:
  // Posts a Drain unless one is pending; false when the connection is gone.
  bool Schedule() {
    {
      MutexLock lock(mu_);
      if (drain_posted_) return true;
      drain_posted_ = true;
    }
    if (responder_->Post([self = shared_from_this()] { self->Drain(); })) return true;
    MutexLock lock(mu_);
    drain_posted_ = false;
    return false;
  }

  // Strand only. Turns what the engine handed over into the response.
  void Drain() {
    std::deque<uint32_t> tokens;
    std::deque<engine::TokenLogprobs> logprobs;
    bool done = false;
    {
      MutexLock lock(mu_);
      drain_posted_ = false;
      tokens.swap(tokens_);
      // Logprobs come just before their token: keep one that has no token yet.
      while (!logprobs_.empty() && logprobs.size() < tokens.size()) {
        logprobs.push_back(std::move(logprobs_.front()));
        logprobs_.pop_front();
      }
      done = done_;
      if (done) {
        status_ = result_.status;
        usage_.prompt_tokens = result_.prompt_tokens;
        usage_.cached_tokens = result_.hit_tokens;
        plan_ = result_.plan;
      }
    }
    if (ended_) return;
    if (first_token_ && (!tokens.empty() || done)) {
      counters_->ttft_seconds.Observe(std::chrono::duration<double>(Clock::now() - start_).count());
      first_token_ = false;
    }
    std::string delta;
    for (size_t i = 0; i < tokens.size(); ++i) {
      bool answer = false;
      delta += assembler_.Push(tokens[i], &answer);
      if (want_logprobs_ && i < logprobs.size() && answer) entries_.push_back(lp_assembler_.Entry(logprobs[i]));
    }
    if (assembler_.finished()) cancel->store(true);  // a stop string: no more tokens needed
    if (done) delta += assembler_.Finish();
    text_delta_ += delta;
    usage_.completion_tokens = assembler_.completion_tokens();

    if (!r_.stream) {
      if (!done) return;
      ended_ = true;
      Account();
      if (!status_.ok()) return Error(FailureError(status_));
      responder_->Respond({200, "application/json", {},
                           CompletionJson(r_, id_, created_, assembler_.text(), assembler_.reason(), usage_, entries_)});
      return;
    }
    if (!stream_started_) {
      if (done && !status_.ok()) {  // failed before its first token: an error, not an empty stream
        ended_ = true;
        Account();
        return Error(FailureError(status_));
      }
      if (tokens.empty() && !done) return;
      responder_->StartStream(200, "text/event-stream", {{"Cache-Control", "no-cache"}});
      stream_started_ = true;
    }
    // Entries wait for the next chunk sent (tokens that add no text yet send none).
    if (!text_delta_.empty() || (first_chunk_ && done)) {
      Send(ChunkJson(r_, id_, created_, text_delta_, first_chunk_, "", entries_));
      entries_.clear();
      text_delta_.clear();
      first_chunk_ = false;
    }
    if (!done) return;
    ended_ = true;
    Send(ChunkJson(r_, id_, created_, "", false, assembler_.reason(), entries_));
    entries_.clear();
    if (r_.include_usage) Send(UsageChunkJson(r_, id_, created_, usage_));
    Send("[DONE]");
    responder_->End();
    Account();
  }

  // A request that failed: its model could not be loaded (or the server is stopping) is a 503
  // naming the cause; anything else the engine reports is a 500.
  static ApiError FailureError(const Status& st) {
    if (st.code() == Code::kUnavailable) return {503, st.message(), "server_error", "model", "model_not_available"};
    return {500, "generation failed: " + st.ToString(), "server_error", "", ""};
  }
  void Send(const std::string& data) { responder_->Write("data: " + data + "\n\n"); }
  void Error(const ApiError& e) {
    ++counters_->errors_5xx;
    responder_->Respond({e.http_status, "application/json", {}, ErrorJson(e)});
  }
  // The request's accounting, once (strand, or the engine thread when no drain will come).
  void Account() { Account(usage_, plan_); }
  void Account(const engine::RequestResult& r, int64_t completion_tokens) REQUIRES(mu_) {
    Usage u;
    u.prompt_tokens = r.prompt_tokens;
    u.cached_tokens = r.hit_tokens;
    u.completion_tokens = completion_tokens;
    Account(u, r.plan);
  }
  void Account(const Usage& u, const planner::LoadPlan& plan) {
    if (accounted_.exchange(true)) return;
    if (plan.cached_chunks > 0) {
      ++counters_->plans[static_cast<int>(plan.kind)];
      counters_->recomputed_cached_tokens += static_cast<uint64_t>(plan.recompute_tokens);
    }
    counters_->prompt_tokens += static_cast<uint64_t>(u.prompt_tokens);
    counters_->cached_tokens += static_cast<uint64_t>(u.cached_tokens);
    counters_->completion_tokens += static_cast<uint64_t>(u.completion_tokens);
    counters_->request_seconds.Observe(std::chrono::duration<double>(Clock::now() - start_).count());
    --counters_->active;
  }

  const std::shared_ptr<ServeCounters> counters_;
  const std::shared_ptr<http::Responder> responder_;
  const Clock::time_point start_ = Clock::now();
  std::atomic<bool> accounted_{false};

  Mutex mu_;
  std::deque<uint32_t> tokens_ GUARDED_BY(mu_);  // sampled, not yet drained
  // With logprobs asked, the log-probabilities of `tokens_` in the same order (the engine
  // reports a token's log-probabilities just before the token: this may hold one more).
  std::deque<engine::TokenLogprobs> logprobs_ GUARDED_BY(mu_);
  bool done_ GUARDED_BY(mu_) = false;
  engine::RequestResult result_ GUARDED_BY(mu_);  // valid when done_
  bool drain_posted_ GUARDED_BY(mu_) = false;

  // Strand only.
  const GenerationRequest r_;
  const std::string id_;
  const int64_t created_;
  const bool want_logprobs_;
  TextAssembler assembler_;
  LogprobAssembler lp_assembler_;
  std::vector<LogprobEntry> entries_;
  std::string text_delta_;  // text not yet sent
  Status status_;
  Usage usage_;
  planner::LoadPlan plan_;
  bool first_token_ = true, first_chunk_ = true, stream_started_ = false, ended_ = false;
};

// A few threads that run queued tasks, with a bounded queue: parsing a request's body and
// tokenizing its prompt (seconds for a 16 MiB body) happen here rather than on an io thread.
// Thread-safety: TryPost from any thread; Stop (idempotent) from the owner's thread, after the
// last TryPost caller is done.
class BoundedWorkers {
 public:
  BoundedWorkers(int threads, size_t capacity) : capacity_(capacity) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~BoundedWorkers() { Stop(); }
  BoundedWorkers(const BoundedWorkers&) = delete;
  BoundedWorkers& operator=(const BoundedWorkers&) = delete;

  // Queues `task`; false (and `task` is dropped) when capacity tasks wait already or Stop ran.
  bool TryPost(std::function<void()> task) EXCLUDES(mu_) {
    {
      MutexLock lock(mu_);
      if (stopping_ || queue_.size() >= capacity_) return false;
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    return true;
  }
  // Finishes the tasks running, drops those still queued, joins the threads.
  void Stop() EXCLUDES(mu_) {
    std::deque<std::function<void()>> dropped;
    {
      MutexLock lock(mu_);
      stopping_ = true;
      dropped.swap(queue_);
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }

 private:
  void Run() EXCLUDES(mu_) {
    for (;;) {
      std::function<void()> task;
      {
        MutexLock lock(mu_);
        cv_.wait(lock.native(), [&]() REQUIRES(mu_) { return stopping_ || !queue_.empty(); });
        if (stopping_) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();  // tasks catch their own exceptions
    }
  }

  const size_t capacity_;
  Mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // the owner's thread only
};

}  // namespace

class Server::Impl {
 public:
  Impl(ModelSet* models, Store* store, ServerOptions o) : models_(models), store_(store), opt_(std::move(o)) {
    // Each model's stop tokens: its EOS and the chat template's stop strings that are tokens.
    for (size_t m = 0; m < models_->size(); ++m) {
      const ModelText& t = models_->text(m);
      std::vector<uint32_t> ids;
      if (auto eos = t.tokenizer->eos_id()) ids.push_back(*eos);
      for (const std::string& s : t.chat->stop_strings()) {
        if (auto id = t.tokenizer->TokenId(s); id && std::find(ids.begin(), ids.end(), *id) == ids.end()) {
          ids.push_back(*id);
        }
      }
      stop_ids_.push_back(std::move(ids));
    }
  }

  Status Start();
  void Stop();
  int port() const { return http_ ? http_->port() : 0; }

 private:
  void EngineLoop();
  void WakeEngine();
  void Handle(http::Request req, std::shared_ptr<http::Responder> res);
  // Queues Generate on workers_; a 503 when the queue is full. io thread.
  void QueueGenerate(http::Request req, std::shared_ptr<http::Responder> res, bool chat);
  // Parses, tokenizes and submits one generation request. A worker thread.
  void Generate(const http::Request& req, const std::shared_ptr<http::Responder>& res, bool chat);
  void SendError(http::Responder& res, const ApiError& e);
  ApiError UnknownModel(const std::string& name) const;
  static http::Options HttpOptions(const ServerOptions& o);
  std::string Metrics() const;

  ModelSet* const models_;
  Store* store_;
  const ServerOptions opt_;
  std::vector<std::vector<uint32_t>> stop_ids_;  // by model
  // Destroyed only once the engine thread is joined (it calls Responders until then).
  std::unique_ptr<http::Server> http_;
  std::unique_ptr<BoundedWorkers> workers_;  // parse + tokenize + submit, off the io threads
  std::thread engine_thread_;
  std::atomic<bool> stopping_{false};
  std::mutex work_mu_;
  std::condition_variable work_cv_;
  bool work_ = false;  // GUARDED_BY(work_mu_): a request was submitted since the loop looked
  bool engine_stop_ = false;  // GUARDED_BY(work_mu_): the HTTP side is down, no more requests
  std::atomic<uint64_t> next_id_{1};
  const std::shared_ptr<ServeCounters> counters_ = std::make_shared<ServeCounters>();
};

http::Options Server::Impl::HttpOptions(const ServerOptions& o) {
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000.0)); };
  http::Options h;
  h.io_threads = o.io_threads;
  h.max_connections = o.max_connections;
  h.header_timeout = ms(o.header_timeout_s);
  h.body_timeout = ms(o.body_timeout_s);
  h.idle_timeout = ms(o.idle_timeout_s);
  h.write_timeout = ms(o.write_timeout_s);
  h.max_body_bytes = o.max_body_bytes;
  h.send_buffer_bytes = o.send_buffer_bytes;
  return h;
}

Status Server::Impl::Start() {
  if (opt_.prepare_threads < 1 || opt_.prepare_queue < 1) {
    return Status::InvalidArgument("serve options: prepare_threads and prepare_queue must be positive");
  }
  workers_ = std::make_unique<BoundedWorkers>(opt_.prepare_threads, opt_.prepare_queue);
  // Before the first connection can submit a request (Submit reads it, unlocked).
  models_->SetWakeup([this] { WakeEngine(); });
  http_ = std::make_unique<http::Server>(HttpOptions(opt_), [this](http::Request q, std::shared_ptr<http::Responder> r) {
    Handle(std::move(q), std::move(r));
  });
  if (Status st = http_->Start(opt_.host, opt_.port); !st.ok()) {
    http_.reset();
    workers_.reset();
    return st;
  }
  engine_thread_ = std::thread([this] { EngineLoop(); });
  return Status::OK();
}

void Server::Impl::WakeEngine() {
  {
    std::lock_guard<std::mutex> lock(work_mu_);
    work_ = true;
  }
  work_cv_.notify_one();
}

// The order matters: (1) the HTTP side stops (every connection closes, which cancels its
// request; no handler runs after it); (2) the workers finish what they are doing (a request
// submitted now finds its connection closed and is cancelled at once) and drop the rest;
// (3) the model set ends its switcher (a load in progress finishes) and the requests still
// queued for a model; (4) everything in flight is cancelled and the engine thread ends; (5)
// only then is the HTTP server destroyed: until (4) the engine thread may still call a
// request's Responder.
void Server::Impl::Stop() {
  if (stopping_.exchange(true)) return;
  if (http_) http_->Stop();
  if (workers_) workers_->Stop();
  models_->Stop();
  {
    MutexLock lock(counters_->mu);
    for (auto& [_, cancel] : counters_->inflight) cancel->store(true);
  }
  {
    std::lock_guard<std::mutex> lock(work_mu_);
    engine_stop_ = true;
  }
  work_cv_.notify_all();
  if (engine_thread_.joinable()) engine_thread_.join();
  http_.reset();
  workers_.reset();
}

void Server::Impl::EngineLoop() {
  torch::NoGradGuard no_grad;
  const auto give_up = std::chrono::seconds(30);  // cancelled requests end within a step or two
  std::optional<Clock::time_point> stop_since;
  for (;;) {
    if (models_->StepAll()) continue;  // every resident model's engine, in turn
    std::unique_lock<std::mutex> lock(work_mu_);
    if (engine_stop_) {
      // Let the cancelled requests finish, so that none is left half-done in the engine.
      if (!stop_since) stop_since = Clock::now();
      if (counters_->Inflight() == 0 || Clock::now() - *stop_since > give_up) return;
    }
    work_cv_.wait_for(lock, std::chrono::milliseconds(engine_stop_ ? 5 : 50), [&] { return work_ || engine_stop_; });
    work_ = false;
  }
}

void Server::Impl::SendError(http::Responder& res, const ApiError& e) {
  (e.http_status >= 500 ? counters_->errors_5xx : counters_->errors_4xx)++;
  res.Respond({e.http_status, "application/json", {}, ErrorJson(e)});
}

// Runs on the connection's io thread: routes, and answers at once except for generation, which
// goes to the workers (the io threads only move bytes).
void Server::Impl::Handle(http::Request req, std::shared_ptr<http::Responder> res) {
  const std::string& path = req.path;
  const bool get = req.method == "GET" || req.method == "HEAD";
  if (req.method == "POST" && path == "/v1/chat/completions") return QueueGenerate(std::move(req), std::move(res), true);
  if (req.method == "POST" && path == "/v1/completions") return QueueGenerate(std::move(req), std::move(res), false);
  if (get && path == "/healthz") {
    const bool stopping = stopping_.load();
    return res->Respond({stopping ? 503 : 200, "text/plain", {}, stopping ? "stopping\n" : "ok\n"});
  }
  if (get && path == "/metrics") return res->Respond({200, "text/plain; version=0.0.4", {}, Metrics()});
  if (get && path == "/v1/models") {
    return res->Respond({200, "application/json", {}, ServedModelsJson(models_->Snapshot(), UnixNow())});
  }
  const std::string models = "/v1/models/";
  if (get && path.starts_with(models) && path.size() > models.size()) {
    const std::string name = path.substr(models.size());
    const std::optional<size_t> m = models_->Find(name);
    if (!m) return SendError(*res, UnknownModel(name));
    return res->Respond({200, "application/json", {}, ServedModelJson(models_->Snapshot()[*m], UnixNow())});
  }
  ApiError e;
  e.http_status = 404;
  e.message = "unknown route";
  SendError(*res, e);
}

void Server::Impl::QueueGenerate(http::Request req, std::shared_ptr<http::Responder> res, bool chat) {
  auto shared_req = std::make_shared<http::Request>(std::move(req));
  const bool queued = workers_->TryPost([this, shared_req, res, chat] {
    try {
      Generate(*shared_req, res, chat);
    } catch (const std::exception& e) {
      SendError(*res, {500, std::string("internal error: ") + e.what(), "server_error", "", ""});
    } catch (...) {
      SendError(*res, {500, "internal error", "server_error", "", ""});
    }
  });
  if (!queued) {
    ++counters_->requests;
    ++counters_->busy;
    SendError(*res, {503, "The server is busy (" + std::to_string(opt_.prepare_queue) +
                              " requests wait to be prepared); try again shortly",
                     "server_error", "", "server_overloaded"});
  }
}

void Server::Impl::Generate(const http::Request& req, const std::shared_ptr<http::Responder>& res, bool chat) {
  ++counters_->requests;
  GenerationRequest r;
  if (auto e = ParseGenerationRequest(req.body, chat, &r)) return SendError(*res, *e);
  const std::optional<size_t> model = models_->Find(r.model);
  if (!model) return SendError(*res, UnknownModel(r.model));
  const ModelText& text = models_->text(*model);
  const std::vector<uint32_t>& stop_ids = stop_ids_[*model];
  // The prompt's tokens.
  auto tokens = PromptTokens(r, *text.tokenizer, *text.chat, {text.add_bos, opt_.special_tokens_in_content});
  if (!tokens.ok()) {
    return SendError(*res, {400, tokens.status().message(), "invalid_request_error", chat ? "messages" : "prompt", ""});
  }
  std::vector<uint32_t> prompt = std::move(*tokens);
  const auto n = static_cast<int64_t>(prompt.size());
  if (n == 0) return SendError(*res, {400, "the prompt is empty", "invalid_request_error", chat ? "messages" : "prompt", ""});
  const int64_t room = opt_.max_context - n;
  if (room < 1 || (r.max_tokens > 0 && r.max_tokens > room)) {
    return SendError(*res, {400,
                            "This model's maximum context length is " + std::to_string(opt_.max_context) +
                                " tokens. However, you requested " + std::to_string(n + std::max<int64_t>(r.max_tokens, 1)) +
                                " tokens (" + std::to_string(n) + " in the messages, " +
                                std::to_string(std::max<int64_t>(r.max_tokens, 1)) + " in the completion).",
                            "invalid_request_error", "messages", "context_length_exceeded"});
  }
  engine::SamplingParams p;
  p.max_new_tokens = r.max_tokens > 0 ? r.max_tokens : std::min(opt_.default_max_tokens, room);
  p.temperature = static_cast<float>(r.temperature);
  p.top_p = static_cast<float>(r.top_p);
  p.seed = r.seed.value_or(next_id_.load());
  p.fixed_seed = r.seed.has_value();  // the same seed, the same sample
  p.stop_tokens = stop_ids;
  p.tenant = req.Header(opt_.tenant_header);
  if (p.tenant.empty()) p.tenant = r.user;  // OpenAI's end-user id, when no tenant header
  const bool want_logprobs = r.top_logprobs >= 0;
  if (want_logprobs) p.top_logprobs = r.top_logprobs;
  const uint64_t request_id = next_id_++;
  const std::string id = std::string(chat ? "chatcmpl-" : "cmpl-") + std::to_string(request_id);
  auto gen = std::make_shared<Generation>(counters_, res, *text.tokenizer, stop_ids, std::move(r), id, want_logprobs);
  p.cancel = gen->cancel;
  if (want_logprobs) p.on_logprobs = [gen](const engine::TokenLogprobs& lp) { gen->OnLogprobs(lp); };
  p.on_token = [gen](uint32_t t) { gen->OnToken(t); };
  // A client that leaves (or a deadline that closes its connection) cancels the request.
  res->OnClose([gen] { gen->OnClientGone(); });
  ++counters_->active;
  gen->request_id = request_id;
  {
    // Registered before Submit, under the lock the done callback takes to unregister.
    MutexLock lock(counters_->mu);
    counters_->inflight[gen->request_id] = gen->cancel;
  }
  // To the model's engine now when it is resident, else queued until the switcher loads it.
  models_->Submit(*model, {std::move(prompt), std::move(p), [gen](engine::RequestResult result) {
                             gen->OnDone(std::move(result));
                           }});
}

ApiError Server::Impl::UnknownModel(const std::string& name) const {
  std::string served;
  for (const std::string& id : models_->ids()) served += (served.empty() ? "'" : ", '") + id + "'";
  return {404, "The model '" + name + "' does not exist; this server serves " + served, "invalid_request_error", "model",
          "model_not_found"};
}

std::string Server::Impl::Metrics() const {
  const ServeCounters& c = *counters_;
  PrometheusWriter w;
  if (store_ != nullptr) AppendStoreMetrics(w, store_->Stats(), nullptr);
  w.AddCounter("kvault_serve_requests_total", "Generation requests received.", {}, c.requests.load());
  w.AddCounter("kvault_serve_errors_total", "Requests answered with an error, by class.", {{"class", "4xx"}}, c.errors_4xx.load());
  w.AddCounter("kvault_serve_errors_total", "Requests answered with an error, by class.", {{"class", "5xx"}}, c.errors_5xx.load());
  w.AddCounter("kvault_serve_prompt_tokens_total", "Prompt tokens of finished requests.", {}, c.prompt_tokens.load());
  w.AddCounter("kvault_serve_cached_prompt_tokens_total", "Prompt tokens served from the cache.", {}, c.cached_tokens.load());
  w.AddCounter("kvault_serve_completion_tokens_total", "Tokens generated.", {}, c.completion_tokens.load());
  for (auto kind : {planner::PlanKind::kLoad, planner::PlanKind::kRecompute, planner::PlanKind::kSplit}) {
    w.AddCounter("kvault_serve_plans_total", "Requests with a cached prefix, by what the planner chose for it.",
                 {{"plan", planner::PlanKindName(kind)}}, c.plans[static_cast<int>(kind)].load());
  }
  w.AddCounter("kvault_serve_recomputed_cached_tokens_total",
               "Cached prompt tokens the planner chose to recompute rather than load.", {},
               c.recomputed_cached_tokens.load());
  w.AddCounter("kvault_serve_cancelled_by_client_total",
               "Requests whose client left (or whose connection hit a deadline) before the answer was sent.", {},
               c.client_gone.load());
  w.AddGauge("kvault_serve_active_requests", "Requests in progress.", {}, c.active.load());
  w.AddCounter("kvault_serve_busy_rejections_total",
               "Generation requests answered 503 because the queue of requests to prepare was full.", {},
               c.busy.load());
  const http::Stats hs = http_ ? http_->stats() : http::Stats{};
  w.AddGauge("kvault_serve_open_connections", "HTTP connections open.", {}, hs.open_connections);
  w.AddCounter("kvault_serve_rejected_connections_total", "Connections refused with a 503 past --max-connections.", {},
               hs.rejected_connections);
  w.AddCounter("kvault_serve_connection_timeouts_total",
               "Connections closed by a deadline (header, body, idle keep-alive, write).", {}, hs.timeouts);
  w.AddCounter("kvault_serve_bad_http_requests_total", "Requests refused by the HTTP layer (400, 413, 431).", {},
               hs.bad_requests);
  // The served models: which are resident, how often each was loaded and from where.
  const std::vector<ModelStatus> models = models_->Snapshot();
  w.AddGauge("kvault_serve_models_resident", "Models with an engine (and their weights) in memory.", {},
             static_cast<uint64_t>(models_->resident()));
  for (const ModelStatus& m : models) {
    for (const auto& [from, n] : m.loads_by_from) {
      w.AddCounter("kvault_serve_model_loads_total", "Model loads (startup and switches), by model and weights source.",
                   {{"model", m.id}, {"from", from}}, n);
    }
  }
  for (const ModelStatus& m : models) {
    w.AddCounter("kvault_serve_model_load_failures_total", "Model switches that failed (their queued requests got 503).",
                 {{"model", m.id}}, m.load_failures);
  }
  for (const ModelStatus& m : models) {
    w.AddCounter("kvault_serve_model_requests_total", "Generation requests for a served model.", {{"model", m.id}},
                 m.requests);
  }
  for (const ModelStatus& m : models) {
    w.AddGauge("kvault_serve_model_queued_requests", "Requests waiting for their model to be loaded.", {{"model", m.id}},
               m.queued);
  }
  w.AddHistogram("kvault_serve_model_load_seconds", "Time to load a model (weights, network, engine).", {},
                 models_->load_seconds());
  w.AddHistogram("kvault_serve_ttft_seconds", "Time to first token.", {}, c.ttft_seconds.Snapshot());
  w.AddHistogram("kvault_serve_request_seconds", "Time to the last token.", {}, c.request_seconds.Snapshot());
  return w.Text();
}

Server::Server(ModelSet* models, Store* store, ServerOptions options)
    : impl_(std::make_unique<Impl>(models, store, std::move(options))) {}
Server::~Server() { Stop(); }
Status Server::Start() { return impl_->Start(); }
void Server::Stop() { impl_->Stop(); }
int Server::port() const { return impl_->port(); }

}  // namespace kvault::openai
