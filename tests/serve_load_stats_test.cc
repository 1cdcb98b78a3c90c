// `kvault bench serve`'s figures and wire parsing without a server or LibTorch: percentiles,
// the run summary (counts, goodput, time per output token, cached tokens, per turn), the SLO
// verdict and the sweep's maximum (bench/serve_load_stats.*); the SSE parser, the chat stream
// state, base URLs and the HTTP client against a scripted socket peer (bench/serve_load_http.*).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "serve_load_http.h"
#include "serve_load_stats.h"

namespace kvault::serve_load {
namespace {

TEST(ServeLoadStats, PercentileInterpolatesBetweenClosestRanks) {
  std::vector<double> v = {10, 1, 9, 2, 8, 3, 7, 4, 6, 5};  // unsorted on purpose
  EXPECT_DOUBLE_EQ(Percentile(v, 50), 5.5);
  EXPECT_DOUBLE_EQ(Percentile(v, 90), 9.1);
  EXPECT_NEAR(Percentile(v, 99), 9.91, 1e-12);
  EXPECT_DOUBLE_EQ(Percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile(v, 100), 10);
  EXPECT_DOUBLE_EQ(Percentile({42}, 99), 42);
  EXPECT_TRUE(std::isnan(Percentile({}, 50)));
}

RequestRecord Ok(int turn, double ttft, double e2e, int64_t out, int64_t prompt, int64_t cached) {
  RequestRecord r;
  r.turn = turn;
  r.ok = true;
  r.ttft_ms = ttft;
  r.e2e_ms = e2e;
  r.completion_tokens = out;
  r.prompt_tokens = prompt;
  r.cached_tokens = cached;
  return r;
}

RequestRecord Failed(int turn, const std::string& error) {
  RequestRecord r;
  r.turn = turn;
  r.error = error;
  r.e2e_ms = 5;
  return r;
}

TEST(ServeLoadStats, SummaryCountsFiguresAndGoodput) {
  const std::vector<RequestRecord> records = {
      Ok(1, 100, 400, 4, 300, 0),     // tpot (400-100)/3 = 100
      Ok(2, 200, 260, 4, 400, 300),   // tpot 20
      Ok(1, 300, 300, 1, 300, 0),     // one token: no tpot
      Ok(2, 2500, 2590, 4, 410, 300), // over the SLO; tpot 30
      Failed(2, "http 500"),
      Failed(1, "timeout"),
      Failed(2, "http 500"),
  };
  const LoadSummary s = Summarize(records, /*slo_ttft_ms=*/2000, /*elapsed_s=*/2.0);
  EXPECT_EQ(s.sent, 7);
  EXPECT_EQ(s.completed, 4);
  EXPECT_EQ(s.failed, 3);
  EXPECT_EQ(s.completed + s.failed, s.sent);
  EXPECT_EQ(s.errors.at("http 500"), 2);
  EXPECT_EQ(s.errors.at("timeout"), 1);
  // Percentiles over completed requests only: TTFTs 100, 200, 300, 2500.
  EXPECT_DOUBLE_EQ(s.ttft_p50_ms, 250);
  EXPECT_DOUBLE_EQ(s.ttft_p90_ms, 300 + 0.7 * 2200);
  EXPECT_DOUBLE_EQ(s.ttft_p99_ms, 300 + 0.97 * 2200);
  EXPECT_DOUBLE_EQ(s.ttft_mean_ms, 775);
  EXPECT_DOUBLE_EQ(s.tpot_ms, 50);      // mean of 100, 20, 30
  EXPECT_DOUBLE_EQ(s.tpot_p50_ms, 30);
  EXPECT_DOUBLE_EQ(s.e2e_p50_ms, 350);
  EXPECT_EQ(s.prompt_tokens, 1410);
  EXPECT_EQ(s.cached_tokens, 600);
  EXPECT_EQ(s.completion_tokens, 13);
  EXPECT_DOUBLE_EQ(s.cached_token_fraction, 600.0 / 1410.0);
  EXPECT_EQ(s.met_slo, 3);
  EXPECT_DOUBLE_EQ(s.goodput_rps, 1.5);
  EXPECT_DOUBLE_EQ(s.throughput_rps, 2.0);
  ASSERT_EQ(s.turns.size(), 2u);
  EXPECT_EQ(s.turns[0].sent, 3);
  EXPECT_EQ(s.turns[0].completed, 2);
  EXPECT_EQ(s.turns[0].cached_tokens, 0);
  EXPECT_EQ(s.turns[1].sent, 4);
  EXPECT_EQ(s.turns[1].cached_tokens, 600);
  EXPECT_DOUBLE_EQ(s.turns[1].ttft_p50_ms, 1350);

  const nlohmann::json j = ToJson(s);
  for (const char* key : {"ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "tpot_ms", "sent", "completed", "failed",
                          "goodput_rps", "cached_token_fraction", "prompt_tokens", "cached_tokens", "e2e_p90_ms"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
}

// Inter-token latency pools every gap of every completed request; a failed request's gaps
// never count.
TEST(ServeLoadStats, InterTokenLatencyPoolsTheGapsOfCompletedRequests) {
  RequestRecord a = Ok(1, 100, 400, 4, 300, 0);
  a.itl_ms = {10, 250, 40};  // a stall of 250 ms behind another request's prefill
  RequestRecord b = Ok(2, 100, 200, 3, 300, 0);
  b.itl_ms = {20, 30};
  RequestRecord failed = Failed(1, "stream cut");
  failed.itl_ms = {5000};
  const LoadSummary s = Summarize({a, b, failed}, 2000, 1.0);
  // Gaps 10, 20, 30, 40, 250.
  EXPECT_DOUBLE_EQ(s.itl_p50_ms, 30);
  EXPECT_DOUBLE_EQ(s.itl_p99_ms, 40 + 0.96 * 210);
  EXPECT_DOUBLE_EQ(s.itl_max_ms, 250);
  const nlohmann::json j = ToJson(s);
  for (const char* key : {"itl_p50_ms", "itl_p99_ms", "itl_max_ms"}) EXPECT_TRUE(j.contains(key)) << key;
}

TEST(ServeLoadStats, NothingCompletedGivesNullPercentilesAndNoSlo) {
  const LoadSummary s = Summarize({Failed(1, "connect: Connection refused")}, 2000, 1.0);
  EXPECT_EQ(s.failed, 1);
  EXPECT_TRUE(std::isnan(s.ttft_p90_ms));
  EXPECT_TRUE(ToJson(s)["ttft_p90_ms"].is_null());
  EXPECT_EQ(s.goodput_rps, 0);
  EXPECT_FALSE(MeetsSlo(s, 1.0));
}

TEST(ServeLoadStats, UsageNotReportedIsNotCounted) {
  RequestRecord r = Ok(1, 10, 20, 2, -1, -1);
  const LoadSummary s = Summarize({r}, 2000, 1.0);
  EXPECT_EQ(s.usage_reported, 0);
  EXPECT_EQ(s.prompt_tokens, 0);
  EXPECT_EQ(s.cached_token_fraction, 0);
}

TEST(ServeLoadStats, SloVerdictNeedsP90AndFewFailures) {
  std::vector<RequestRecord> records;
  for (int i = 0; i < 9; ++i) records.push_back(Ok(1, 100, 200, 2, 10, 0));
  records.push_back(Ok(1, 3000, 3100, 2, 10, 0));  // p90 = 100 + 0.1 * 2900 = 390
  EXPECT_TRUE(MeetsSlo(Summarize(records, 400, 1.0), 0.01));
  EXPECT_FALSE(MeetsSlo(Summarize(records, 380, 1.0), 0.01));
  records.push_back(Failed(1, "timeout"));  // 1 of 11 failed
  EXPECT_FALSE(MeetsSlo(Summarize(records, 400, 1.0), 0.01));
  EXPECT_TRUE(MeetsSlo(Summarize(records, 400, 1.0), 0.1));
}

TEST(ServeLoadStats, MaxRateAtSloStopsAtTheFirstBrokenRate) {
  EXPECT_EQ(MaxRateAtSlo({{1, true}, {2, true}, {4, false}, {8, true}}), 2);
  EXPECT_EQ(MaxRateAtSlo({{1, true}, {2, true}, {4, true}}), 4);
  EXPECT_EQ(MaxRateAtSlo({{1, false}, {2, true}}), 0);
  EXPECT_EQ(MaxRateAtSlo({}), 0);
}

TEST(ServeLoadSse, EventsSurviveAnySplit) {
  const std::string stream =
      ": a comment\r\n\r\ndata: {\"a\":1}\n\ndata: line one\ndata: line two\n\nevent: x\ndata: [DONE]\r\n\r\n";
  const std::vector<std::string> want = {"{\"a\":1}", "line one\nline two", "[DONE]"};
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    std::vector<std::string> got;
    SseParser p([&](std::string_view d) { got.emplace_back(d); });
    p.Feed(std::string_view(stream).substr(0, cut));
    p.Feed(std::string_view(stream).substr(cut));
    EXPECT_EQ(got, want) << "cut at " << cut;
  }
  std::vector<std::string> got;  // one byte at a time
  SseParser p([&](std::string_view d) { got.emplace_back(d); });
  for (char c : stream) p.Feed(std::string_view(&c, 1));
  EXPECT_EQ(got, want);
}

TEST(ServeLoadSse, ChatStreamStateFindsFirstTokenUsageAndErrors) {
  ChatStreamState st;
  EXPECT_FALSE(st.Add(R"({"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})"));
  EXPECT_FALSE(st.first_token_seen);
  EXPECT_TRUE(st.Add(R"({"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]})"));
  EXPECT_FALSE(st.Add(R"({"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]})"));
  EXPECT_FALSE(st.Add(R"({"choices":[{"index":0,"delta":{},"finish_reason":"length"}]})"));
  EXPECT_FALSE(st.Add(
      R"({"choices":[],"usage":{"prompt_tokens":120,"completion_tokens":2,"total_tokens":122,"prompt_tokens_details":{"cached_tokens":64}}})"));
  EXPECT_FALSE(st.done);
  EXPECT_FALSE(st.Add("[DONE]"));
  EXPECT_TRUE(st.done);
  EXPECT_EQ(st.text, "Hello");
  EXPECT_EQ(st.content_chunks, 2);
  EXPECT_EQ(st.prompt_tokens, 120);
  EXPECT_EQ(st.completion_tokens, 2);
  EXPECT_EQ(st.cached_tokens, 64);
  EXPECT_TRUE(st.error.empty());

  ChatStreamState empty_answer;  // an answer that ends at once: the finish chunk is its first token
  EXPECT_TRUE(empty_answer.Add(R"({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})"));

  ChatStreamState bad;
  bad.Add(R"({"error":{"message":"overloaded"}})");
  EXPECT_EQ(bad.error, "stream error");
  ChatStreamState garbage;
  garbage.Add("not json");
  EXPECT_EQ(garbage.error, "bad stream payload");
  ChatStreamState null_usage;  // usage: null and cached_tokens: null are "not reported"
  null_usage.Add(R"({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":null,"prompt_tokens_details":null}})");
  EXPECT_EQ(null_usage.prompt_tokens, 5);
  EXPECT_EQ(null_usage.completion_tokens, -1);
  EXPECT_EQ(null_usage.cached_tokens, -1);
}

TEST(ServeLoadHttp, BaseUrls) {
  auto a = ParseBaseUrl("http://127.0.0.1:8080");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 8080);
  EXPECT_EQ(a->ChatPath(), "/v1/chat/completions");
  auto b = ParseBaseUrl("http://example.test/v1/");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->port, 80);
  EXPECT_EQ(b->ChatPath(), "/v1/chat/completions");
  auto c = ParseBaseUrl("http://[::1]:9000/api");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->host, "::1");
  EXPECT_EQ(c->ChatPath(), "/api/v1/chat/completions");
  EXPECT_FALSE(ParseBaseUrl("https://example.test").ok());
  EXPECT_FALSE(ParseBaseUrl("http://:80").ok());
  EXPECT_FALSE(ParseBaseUrl("http://host:99999").ok());
  EXPECT_FALSE(ParseBaseUrl("http://host:80x").ok());
}

// A scripted peer on loopback: accepts one connection and, for each request it reads, writes
// the next of `answers` (each a list of pieces sent with a short pause between them); an
// answer of {} means "say nothing and keep the connection open".
class ScriptedPeer {
 public:
  explicit ScriptedPeer(std::vector<std::vector<std::string>> answers) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    ::listen(listen_fd_, 4);
    thread_ = std::thread([this, answers = std::move(answers)] {
      const int fd = ::accept(listen_fd_, nullptr, nullptr);
      std::string in;
      char buf[4096];
      for (const auto& answer : answers) {
        // Read one request: headers, then Content-Length bytes.
        size_t end;
        while ((end = in.find("\r\n\r\n")) == std::string::npos) {
          const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
          if (n <= 0) return;
          in.append(buf, static_cast<size_t>(n));
        }
        size_t body = 0;
        if (const size_t cl = in.find("Content-Length: "); cl != std::string::npos && cl < end) body = std::stoul(in.substr(cl + 16));
        while (in.size() < end + 4 + body) {
          const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
          if (n <= 0) return;
          in.append(buf, static_cast<size_t>(n));
        }
        requests_.push_back(in.substr(0, end + 4 + body));
        in.erase(0, end + 4 + body);
        if (answer.empty()) {  // stall until the client gives up
          while (::recv(fd, buf, sizeof buf, 0) > 0) {
          }
          break;
        }
        for (const std::string& piece : answer) {
          ::send(fd, piece.data(), piece.size(), MSG_NOSIGNAL);
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }
      ::close(fd);
    });
  }
  ~ScriptedPeer() {
    if (thread_.joinable()) thread_.join();
    ::close(listen_fd_);
  }
  int port() const { return port_; }
  void Join() { thread_.join(); }
  const std::vector<std::string>& requests() const { return requests_; }

 private:
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  std::vector<std::string> requests_;  // read after Join()
};

TEST(ServeLoadHttp, ChunkedStreamsKeepAliveAndDeadline) {
  const std::string sse = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
  char size_a[16], size_b[16];
  std::snprintf(size_a, sizeof size_a, "%zx", size_t{10});
  std::snprintf(size_b, sizeof size_b, "%zx", sse.size() - 10);
  ScriptedPeer peer({
      // 1: chunked, split across writes in awkward places (inside the size line and the data).
      {"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
       std::string(size_a) + "\r\n" + sse.substr(0, 4), sse.substr(4, 6) + "\r\n" + std::string(size_b).substr(0, 1),
       std::string(size_b).substr(1) + ";ext=1\r\n" + sse.substr(10) + "\r\n", "0\r\n\r\n"},
      // 2: same connection, an error with a Content-Length body.
      {"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\noverload!"},
      // 3: a stall: the client's deadline ends it.
      {},
  });
  BaseUrl url{"127.0.0.1", peer.port(), ""};
  HttpClient client(url);
  const auto soon = [](int ms) { return HttpClient::Clock::now() + std::chrono::milliseconds(ms); };

  std::string body;
  auto r1 = client.Request("POST", url.ChatPath(), "{\"x\":1}", soon(5000), [&](std::string_view b) {
    body.append(b);
    return true;
  });
  EXPECT_EQ(r1.error, "");
  EXPECT_EQ(r1.status, 200);
  EXPECT_EQ(body, sse);

  body.clear();
  auto r2 = client.Request("POST", url.ChatPath(), "{}", soon(5000), [&](std::string_view b) {
    body.append(b);
    return true;
  });
  EXPECT_EQ(r2.error, "");
  EXPECT_EQ(r2.status, 503);
  EXPECT_EQ(r2.body, "overload!");
  EXPECT_TRUE(body.empty());  // a non-2xx body is not handed to on_body

  const auto t0 = HttpClient::Clock::now();
  auto r3 = client.Request("POST", url.ChatPath(), "{}", soon(300), [](std::string_view) { return true; });
  EXPECT_EQ(r3.error, "timeout");
  EXPECT_LT(HttpClient::Clock::now() - t0, std::chrono::seconds(10));  // a hang guard, not a timing
  peer.Join();
  ASSERT_EQ(peer.requests().size(), 3u);  // all three on the one kept connection
  EXPECT_NE(peer.requests()[0].find("POST /v1/chat/completions HTTP/1.1\r\n"), std::string::npos);
  EXPECT_NE(peer.requests()[0].find("\r\n\r\n{\"x\":1}"), std::string::npos);
}

TEST(ServeLoadHttp, ConnectionRefusedAndCutStreamsAreErrors) {
  int port;
  {
    ScriptedPeer closed({{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nda"}});  // then closes
    BaseUrl url{"127.0.0.1", closed.port(), ""};
    HttpClient client(url);
    auto r = client.Request("POST", "/v1/chat/completions", "{}",
                            HttpClient::Clock::now() + std::chrono::seconds(5), [](std::string_view) { return true; });
    EXPECT_EQ(r.error, "stream cut");
    port = closed.port();
  }
  HttpClient client(BaseUrl{"127.0.0.1", port, ""});  // nobody listens there any more
  auto r = client.Request("POST", "/v1/chat/completions", "{}", HttpClient::Clock::now() + std::chrono::seconds(5),
                          [](std::string_view) { return true; });
  EXPECT_EQ(r.error.rfind("connect: ", 0), 0u) << r.error;
}

}  // namespace
}  // namespace kvault::serve_load
