// `kvault serve`: an OpenAI-compatible HTTP server over the engine (continuous batching) and
// its store. Conversations need no id: a returning conversation's history is found in the
// store by prefix hashing, and usage.prompt_tokens_details.cached_tokens says how much.
//
// Several models (model_set.h): requests name one of the set's models; each resident model
// has its own engine, the others are switched in on demand by the set's switcher thread.
//
// Threads: kvault::http's io threads (ServerOptions::io_threads, event-driven, one strand per
// connection) only move bytes and route; a few worker threads (prepare_threads, with a queue of
// prepare_queue requests; past it a 503) parse generation requests, tokenize prompts and
// submit them to the model set; one engine thread steps every resident model's engine in turn
// (ModelSet::StepAll) and hands each request's
// tokens to its connection's strand, which writes them out. No thread waits on a client: a slow
// or idle client costs memory, and the limits below bound that. A client that leaves cancels
// its request. Stop ends the HTTP side, then the workers, then the engine thread, and only then
// frees the HTTP server. Thread-safety: Start/Stop from one thread.
#pragma once

#include <memory>
#include <string>

#include "kvault/status.h"
#include "kvault/store.h"
#include "openai/model_set.h"

namespace kvault::openai {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                      // 0: any free port (see Server::port)
  int64_t max_context = 4096;           // prompt + completion tokens
  int64_t default_max_tokens = 256;     // when a request gives none (capped by the context)
  std::string tenant_header = "X-Kvault-Tenant";  // maps a request to a store tenant
  // The HTTP layer (src/http/http_server.h; docs/SERVE.md "Limits").
  int io_threads = 2;                   // event-loop threads (no thread per connection)
  int max_connections = 1024;           // open at once; past it a 503 and close
  double header_timeout_s = 10;         // a request's header, from its first byte (408)
  double body_timeout_s = 30;           // a request's body, after its header (408)
  double idle_timeout_s = 60;           // a keep-alive connection with no request (closed)
  double write_timeout_s = 30;          // a response write that makes no progress (closed)
  int prepare_threads = 2;              // threads that parse, tokenize and submit requests
  size_t prepare_queue = 64;            // generation requests waiting for them; past it a 503
  size_t max_body_bytes = size_t{16} << 20;  // larger bodies get 413
  size_t send_buffer_bytes = size_t{256} << 10;  // per-connection SO_SNDBUF (0: kernel autotuning)
  // Special-token spellings typed in message content become control tokens (the old,
  // forgeable behaviour). Off by default: the chat template alone writes control tokens.
  bool special_tokens_in_content = false;
};

class Server {
 public:
  // `models`: loaded (ModelSet::LoadAll has returned); the ids requests name, each model's
  // text side (whether /v1/completions prompts start with BOS: ModelText::add_bos) and engine.
  // `store` may be null (cache off). Both must outlive the server.
  Server(ModelSet* models, Store* store, ServerOptions options);
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
