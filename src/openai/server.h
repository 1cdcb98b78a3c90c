// `kvault serve`: an OpenAI-compatible HTTP server over the engine (continuous batching) and
// its store. Conversations need no id: a returning conversation's history is found in the
// store by prefix hashing, and usage.prompt_tokens_details.cached_tokens says how much.
//
// Threads: cpp-httplib's worker pool runs the handlers; one engine thread runs the engine
// loop (Engine::Step). Handlers submit requests and wait on a per-request state the engine
// thread fills token by token. Thread-safety: Start/Stop from one thread.
#pragma once

#include <memory>
#include <string>

#include "engine/engine.h"
#include "kvault/status.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kvault::openai {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                      // 0: any free port (see Server::port)
  std::string model_id = "kvault";      // what /v1/models lists and requests must name
  int64_t max_context = 4096;           // prompt + completion tokens
  int64_t default_max_tokens = 256;     // when a request gives none (capped by the context)
  std::string tenant_header = "X-Kvault-Tenant";  // maps a request to a store tenant
  int http_threads = 64;                // concurrent connections served (streams hold one)
  // /v1/completions: raw prompts start with BOS (when the tokenizer has one). False for models
  // that want none (GGUF tokenizer.ggml.add_bos_token false, e.g. SmolLM2).
  bool add_bos = true;
  // Special-token spellings typed in message content become control tokens (the old,
  // forgeable behaviour). Off by default: the chat template alone writes control tokens.
  bool special_tokens_in_content = false;
};

class Server {
 public:
  // `store` may be null (cache off); it must outlive the server, as must `engine`.
  Server(engine::Engine* engine, Store* store, std::shared_ptr<const tokenizer::Tokenizer> tok, tokenizer::ChatTemplate chat,
              ServerOptions options);
  ~Server();  // Stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  Status Start();  // binds and starts serving; returns once the port listens
  void Stop();     // idempotent: stops accepting, finishes the engine loop
  int port() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvault::openai
