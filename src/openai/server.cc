#include "openai/server.h"

#include <httplib.h>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "metrics/latency_histogram.h"
#include "metrics/prometheus_text.h"
#include "openai/openai_api.h"
#include "openai/prompt.h"

namespace kvault::openai {
namespace {

using Clock = std::chrono::steady_clock;
using tokenizer::CompleteUtf8PrefixLength;
using tokenizer::IsValidUtf8;
using tokenizer::SanitizeUtf8;

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// What the engine thread hands a waiting handler: tokens as they come, then the result.
struct RequestState {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<uint32_t> tokens;  // GUARDED_BY(mu): sampled, not yet taken
  // GUARDED_BY(mu): with logprobs asked, the log-probabilities of `tokens` in the same order
  // (the engine reports a token's log-probabilities just before the token: this may hold one more).
  std::deque<engine::TokenLogprobs> logprobs;
  bool done = false;            // GUARDED_BY(mu)
  engine::RequestResult result; // GUARDED_BY(mu): valid when done
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
};

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

}  // namespace

class Server::Impl {
 public:
  Impl(engine::Engine* e, Store* store, std::shared_ptr<const tokenizer::Tokenizer> tok, tokenizer::ChatTemplate chat, ServerOptions o)
      : engine_(e), store_(store), tok_(std::move(tok)), chat_(std::move(chat)), opt_(std::move(o)) {
    if (auto eos = tok_->eos_id()) stop_ids_.push_back(*eos);
    for (const std::string& s : chat_.stop_strings()) {
      if (auto id = tok_->TokenId(s); id && std::find(stop_ids_.begin(), stop_ids_.end(), *id) == stop_ids_.end()) {
        stop_ids_.push_back(*id);
      }
    }
  }

  Status Start();
  void Stop();
  int port() const { return port_; }

 private:
  void EngineLoop();
  void Generate(const httplib::Request& req, httplib::Response& res, bool chat);
  void SendError(httplib::Response& res, const ApiError& e);
  std::string Metrics() const;

  engine::Engine* engine_;
  Store* store_;
  std::shared_ptr<const tokenizer::Tokenizer> tok_;
  const tokenizer::ChatTemplate chat_;
  const ServerOptions opt_;
  std::vector<uint32_t> stop_ids_;
  httplib::Server http_;
  std::thread http_thread_, engine_thread_;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::mutex work_mu_;
  std::condition_variable work_cv_;
  bool work_ = false;  // GUARDED_BY(work_mu_): a request was submitted since the loop looked
  bool engine_stop_ = false;  // GUARDED_BY(work_mu_): the HTTP side is down, no more requests
  std::atomic<uint64_t> next_id_{1};
  // Counters for /metrics.
  std::atomic<uint64_t> requests_{0}, errors_4xx_{0}, errors_5xx_{0}, prompt_tokens_{0}, cached_tokens_{0},
      completion_tokens_{0}, active_{0};
  // The planner's decisions for requests with a cached prefix, by kind (load, recompute,
  // split), and the cached tokens it chose to recompute.
  std::atomic<uint64_t> plans_[3] = {0, 0, 0};
  std::atomic<uint64_t> recomputed_cached_tokens_{0};
  LatencyHistogram ttft_seconds_, request_seconds_;
};

Status Server::Impl::Start() {
  http_.new_task_queue = [n = opt_.http_threads] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
  http_.set_payload_max_length(16u << 20);
  http_.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) { Generate(q, r, true); });
  http_.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) { Generate(q, r, false); });
  http_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& r) {
    r.set_content(ModelsJson(opt_.model_id, UnixNow()), "application/json");
  });
  http_.Get(R"(/v1/models/(.+))", [this](const httplib::Request& q, httplib::Response& r) {
    if (q.matches[1] != opt_.model_id) {
      return SendError(r, {404, "The model '" + std::string(q.matches[1]) + "' does not exist", "invalid_request_error",
                           "model", "model_not_found"});
    }
    r.set_content(ModelJson(opt_.model_id, UnixNow()), "application/json");
  });
  http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
    r.set_content(Metrics(), "text/plain; version=0.0.4");
  });
  http_.Get("/healthz", [this](const httplib::Request&, httplib::Response& r) {
    r.status = stopping_ ? 503 : 200;
    r.set_content(stopping_ ? "stopping\n" : "ok\n", "text/plain");
  });
  http_.set_error_handler([this](const httplib::Request&, httplib::Response& r) {
    if (!r.body.empty()) return;  // a handler already wrote an error object
    ApiError e;
    e.http_status = r.status;
    e.message = r.status == 404 ? "unknown route" : "request failed";
    SendError(r, e);
  });
  http_.set_exception_handler([this](const httplib::Request&, httplib::Response& r, std::exception_ptr) {
    SendError(r, {500, "internal error", "server_error", "", ""});
  });
  port_ = opt_.port == 0 ? http_.bind_to_any_port(opt_.host) : (http_.bind_to_port(opt_.host, opt_.port) ? opt_.port : -1);
  if (port_ <= 0) return Status::Unavailable("cannot listen on " + opt_.host + ":" + std::to_string(opt_.port));
  engine_thread_ = std::thread([this] { EngineLoop(); });
  http_thread_ = std::thread([this] { http_.listen_after_bind(); });
  while (!http_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // Stop() needs it running
  return Status::OK();
}

void Server::Impl::Stop() {
  if (stopping_.exchange(true)) return;
  // HTTP first: the handlers still running finish while the engine loop still serves them.
  http_.stop();
  if (http_thread_.joinable()) http_thread_.join();
  {
    std::lock_guard<std::mutex> lock(work_mu_);
    engine_stop_ = true;
  }
  work_cv_.notify_all();
  if (engine_thread_.joinable()) engine_thread_.join();
}

void Server::Impl::EngineLoop() {
  torch::NoGradGuard no_grad;
  for (;;) {
    bool did = false;
    try {
      did = engine_->Step();
    } catch (const std::exception& e) {  // the engine fails the requests it can; the loop goes on
      std::fprintf(stderr, "kvault serve: engine step failed: %s\n", e.what());
    }
    if (did) continue;
    std::unique_lock<std::mutex> lock(work_mu_);
    if (engine_stop_) return;
    work_cv_.wait_for(lock, std::chrono::milliseconds(50), [&] { return work_ || engine_stop_; });
    work_ = false;
  }
}

void Server::Impl::SendError(httplib::Response& res, const ApiError& e) {
  (e.http_status >= 500 ? errors_5xx_ : errors_4xx_)++;
  res.status = e.http_status;
  res.set_content(ErrorJson(e), "application/json");
}

void Server::Impl::Generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  ++requests_;
  const auto start = Clock::now();
  GenerationRequest r;
  if (auto e = ParseGenerationRequest(req.body, chat, &r)) return SendError(res, *e);
  if (r.model != opt_.model_id) {
    return SendError(res, {404, "The model '" + r.model + "' does not exist; this server serves '" + opt_.model_id + "'",
                           "invalid_request_error", "model", "model_not_found"});
  }
  // The prompt's tokens.
  auto tokens = PromptTokens(r, *tok_, chat_, {opt_.add_bos, opt_.special_tokens_in_content});
  if (!tokens.ok()) {
    return SendError(res, {400, tokens.status().message(), "invalid_request_error", chat ? "messages" : "prompt", ""});
  }
  const std::vector<uint32_t> prompt = std::move(*tokens);
  const auto n = static_cast<int64_t>(prompt.size());
  if (n == 0) return SendError(res, {400, "the prompt is empty", "invalid_request_error", chat ? "messages" : "prompt", ""});
  const int64_t room = opt_.max_context - n;
  if (room < 1 || (r.max_tokens > 0 && r.max_tokens > room)) {
    return SendError(res, {400,
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
  p.stop_tokens = stop_ids_;
  p.tenant = req.get_header_value(opt_.tenant_header);
  if (p.tenant.empty()) p.tenant = r.user;  // OpenAI's end-user id, when no tenant header
  auto state = std::make_shared<RequestState>();
  p.cancel = state->cancel;
  const bool want_logprobs = r.top_logprobs >= 0;
  if (want_logprobs) {
    p.top_logprobs = r.top_logprobs;
    p.on_logprobs = [state](const engine::TokenLogprobs& lp) {
      std::lock_guard<std::mutex> lock(state->mu);
      state->logprobs.push_back(lp);
    };
  }
  p.on_token = [state](uint32_t t) {
    std::lock_guard<std::mutex> lock(state->mu);
    state->tokens.push_back(t);
    state->cv.notify_all();
  };
  engine_->Submit(std::move(prompt), std::move(p), [state](engine::RequestResult result) {
    std::lock_guard<std::mutex> lock(state->mu);
    state->result = std::move(result);
    state->done = true;
    state->cv.notify_all();
  });
  {
    std::lock_guard<std::mutex> lock(work_mu_);
    work_ = true;
  }
  work_cv_.notify_one();
  ++active_;

  const std::string id = std::string(chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id_++);
  const int64_t created = UnixNow();
  auto assembler = std::make_shared<TextAssembler>(*tok_, stop_ids_, r.stop);
  auto lp_assembler = std::make_shared<LogprobAssembler>(*tok_);
  // Waits for the next tokens (or the end) and returns the text they add, and appends their
  // logprobs entries (when asked) to *entries; false at the end.
  auto next = [this, state, assembler, lp_assembler, want_logprobs, start, first_token = std::make_shared<bool>(true)](
                  std::string* delta, std::vector<LogprobEntry>* entries) -> bool {
    std::unique_lock<std::mutex> lock(state->mu);
    state->cv.wait(lock, [&] { return !state->tokens.empty() || state->done; });
    if (*first_token && (!state->tokens.empty() || state->done)) {
      ttft_seconds_.Observe(std::chrono::duration<double>(Clock::now() - start).count());
      *first_token = false;
    }
    while (!state->tokens.empty()) {
      bool answer = false;
      *delta += assembler->Push(state->tokens.front(), &answer);
      state->tokens.pop_front();
      if (want_logprobs && !state->logprobs.empty()) {  // never empty here: reported before the token
        if (answer) entries->push_back(lp_assembler->Entry(state->logprobs.front()));
        state->logprobs.pop_front();
      }
    }
    if (assembler->finished()) state->cancel->store(true);  // a stop string: no more tokens needed
    if (!state->done) return true;
    *delta += assembler->Finish();
    return false;
  };
  auto usage_of = [state, assembler]() {
    std::lock_guard<std::mutex> lock(state->mu);
    Usage u;
    u.prompt_tokens = state->result.prompt_tokens;
    u.completion_tokens = assembler->completion_tokens();
    u.cached_tokens = state->result.hit_tokens;
    return u;
  };
  auto finish = [this, state, start, usage_of]() {
    const Usage u = usage_of();
    {
      std::lock_guard<std::mutex> lock(state->mu);
      const planner::LoadPlan& plan = state->result.plan;
      if (plan.cached_chunks > 0) {
        ++plans_[static_cast<int>(plan.kind)];
        recomputed_cached_tokens_ += static_cast<uint64_t>(plan.recompute_tokens);
      }
    }
    prompt_tokens_ += static_cast<uint64_t>(u.prompt_tokens);
    cached_tokens_ += static_cast<uint64_t>(u.cached_tokens);
    completion_tokens_ += static_cast<uint64_t>(u.completion_tokens);
    request_seconds_.Observe(std::chrono::duration<double>(Clock::now() - start).count());
    --active_;
  };

  if (!r.stream) {
    std::string text;
    std::vector<LogprobEntry> logprobs;
    while (next(&text, &logprobs)) {
    }
    Status st;
    {
      std::lock_guard<std::mutex> lock(state->mu);
      st = state->result.status;
    }
    finish();
    if (!st.ok()) return SendError(res, {500, "generation failed: " + st.ToString(), "server_error", "", ""});
    res.set_content(CompletionJson(r, id, created, assembler->text(), assembler->reason(), usage_of(), logprobs),
                    "application/json");
    return;
  }
  {  // A request that fails before its first token gets an error, not an empty stream.
    std::unique_lock<std::mutex> lock(state->mu);
    state->cv.wait(lock, [&] { return !state->tokens.empty() || state->done; });
    if (state->done && !state->result.status.ok()) {
      const std::string why = state->result.status.ToString();
      lock.unlock();
      finish();
      return SendError(res, {500, "generation failed: " + why, "server_error", "", ""});
    }
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [=, first = std::make_shared<bool>(true), ended = std::make_shared<bool>(false),
       logprobs = std::make_shared<std::vector<LogprobEntry>>()](size_t, httplib::DataSink& sink) {
        if (*ended) return false;
        auto send = [&](const std::string& data) {
          const std::string event = "data: " + data + "\n\n";
          return sink.write(event.data(), event.size());
        };
        std::string delta;
        // Entries wait for the next chunk sent (tokens that add no text yet send none).
        const bool more = next(&delta, logprobs.get());
        if (!delta.empty() || (*first && !more)) {
          if (!send(ChunkJson(r, id, created, delta, *first, "", *logprobs))) {
            state->cancel->store(true);  // the client went away
          }
          logprobs->clear();
          *first = false;
        }
        if (more) return true;
        bool ok = send(ChunkJson(r, id, created, "", false, assembler->reason(), *logprobs));
        logprobs->clear();
        if (ok && r.include_usage) ok = send(UsageChunkJson(r, id, created, usage_of()));
        if (ok) send("[DONE]");
        *ended = true;
        sink.done();
        return true;
      },
      [=](bool) {
        // The stream ended (or the client left): make sure the engine stops and the request's
        // accounting runs once, after the engine let go of it.
        state->cancel->store(true);
        std::unique_lock<std::mutex> lock(state->mu);
        state->cv.wait(lock, [&] { return state->done; });
        lock.unlock();
        finish();
      });
}

std::string Server::Impl::Metrics() const {
  PrometheusWriter w;
  if (store_ != nullptr) AppendStoreMetrics(w, store_->Stats(), nullptr);
  w.AddCounter("kvault_serve_requests_total", "Generation requests received.", {}, requests_.load());
  w.AddCounter("kvault_serve_errors_total", "Requests answered with an error, by class.", {{"class", "4xx"}}, errors_4xx_.load());
  w.AddCounter("kvault_serve_errors_total", "Requests answered with an error, by class.", {{"class", "5xx"}}, errors_5xx_.load());
  w.AddCounter("kvault_serve_prompt_tokens_total", "Prompt tokens of finished requests.", {}, prompt_tokens_.load());
  w.AddCounter("kvault_serve_cached_prompt_tokens_total", "Prompt tokens served from the cache.", {}, cached_tokens_.load());
  w.AddCounter("kvault_serve_completion_tokens_total", "Tokens generated.", {}, completion_tokens_.load());
  for (auto kind : {planner::PlanKind::kLoad, planner::PlanKind::kRecompute, planner::PlanKind::kSplit}) {
    w.AddCounter("kvault_serve_plans_total", "Requests with a cached prefix, by what the planner chose for it.",
                 {{"plan", planner::PlanKindName(kind)}}, plans_[static_cast<int>(kind)].load());
  }
  w.AddCounter("kvault_serve_recomputed_cached_tokens_total",
               "Cached prompt tokens the planner chose to recompute rather than load.", {},
               recomputed_cached_tokens_.load());
  w.AddGauge("kvault_serve_active_requests", "Requests in progress.", {}, active_.load());
  w.AddHistogram("kvault_serve_ttft_seconds", "Time to first token.", {}, ttft_seconds_.Snapshot());
  w.AddHistogram("kvault_serve_request_seconds", "Time to the last token.", {}, request_seconds_.Snapshot());
  return w.Text();
}

Server::Server(engine::Engine* engine, Store* store, std::shared_ptr<const tokenizer::Tokenizer> tok, tokenizer::ChatTemplate chat,
               ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, store, std::move(tok), std::move(chat), std::move(options))) {}
Server::~Server() { Stop(); }
Status Server::Start() { return impl_->Start(); }
void Server::Stop() { impl_->Stop(); }
int Server::port() const { return impl_->port(); }

}  // namespace kvault::openai
