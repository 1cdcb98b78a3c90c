#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/demo/demo.h"
#include "apps/demo/demo_text.h"
#include "charts/svg_chart.h"

namespace kvault::demo {
namespace {

using charts::BarChart;
using charts::BarGroup;

std::string TierLabel(const std::string& tier) { return tier == "none" ? "miss" : tier; }

}  // namespace

std::string Printf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char buf[1024];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

// 12345 -> "12,345".
std::string Thousands(int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

std::string Bytes(double b) {
  if (b >= 1024.0 * 1024 * 1024) return Printf("%.2f GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return Printf("%.1f MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return Printf("%.1f KiB", b / 1024.0);
  return Printf("%.0f B", b);
}

std::string DemoTable(const DemoReport& rep) {
  std::ostringstream out;
  if (rep.options.random_model) {
    out << "kvault demo: " << rep.options.sessions << " sessions x " << rep.options.turns
        << " turns, shared system prompt " << rep.options.system_tokens << " tokens, user messages "
        << rep.options.user_min_tokens << "-" << rep.options.user_max_tokens << " tokens, "
        << rep.options.max_new_tokens << " generated tokens per turn (greedy)\n";
  } else {
    out << "kvault demo: " << rep.options.sessions << " users x " << rep.options.turns
        << " turns about a document (Debian's license texts, about " << rep.options.document_tokens
        << " tokens each; sessions 1 and 3 share one), up to " << rep.options.max_new_tokens
        << " answer tokens per turn (greedy)\n";
  }
  out << "model: " << rep.model_description << "\n";
  out << "device: " << rep.device << ", threads: " << rep.threads << "; chunk " << rep.options.chunk_tokens
      << " tokens; store: DRAM cap " << Bytes(rep.t1_bytes) << " (" << rep.t1_reason << "), SSD cap "
      << Bytes(rep.t2_bytes) << " under " << rep.options.data_dir << "\n\n";

  out << Printf("%4s %4s %8s %6s %8s %12s %10s %7s %7s %13s %5s %8s %9s %5s\n", "sess", "turn", "history", "new",
                "prompt", "recompute_ms", "cached_ms", "ratio", "hit", "hit_t1/t2", "tier", "computed", "|dlogit|",
                "tok1");
  for (const DemoTurn& d : rep.turns) {
    std::string split = Thousands(d.hit_tokens_t1) + "/" + Thousands(d.hit_tokens_t2);
    std::string diff = std::isnan(d.max_abs_logit_diff) ? "n/a" : Printf("%.1e", d.max_abs_logit_diff);
    out << Printf("%4d %4d %8s %6s %8s %12.1f %10.1f %7.3f %7s %13s %5s %8s %9s %5s\n", d.session, d.turn,
                  Thousands(d.history_tokens).c_str(), Thousands(d.new_tokens).c_str(),
                  Thousands(d.prompt_tokens).c_str(), d.ttft_recompute_ms, d.ttft_cached_ms, d.ratio(),
                  Thousands(d.hit_tokens).c_str(), split.c_str(), d.tier.c_str(), Thousands(d.computed_tokens).c_str(),
                  diff.c_str(), d.first_token_equal ? "same" : "DIFF");
  }

  // The conversations themselves (real models).
  if (!rep.options.random_model) {
    out << "\nquestions and answers (answer of the recompute run; 'same' = the cached run answered identically):\n";
    for (const DemoTurn& d : rep.turns) {
      std::string answer = d.answer;
      for (char& c : answer) {
        if (c == '\n') c = ' ';
      }
      out << Printf("  s%d t%d Q: %s\n", d.session, d.turn, d.question.c_str());
      out << Printf("        A: %s [%s]\n", answer.c_str(), d.answer_equal ? "same" : "DIFFERENT");
    }
  }

  // Summary.
  int64_t hit_t1 = 0, hit_t2 = 0, prompt_total = 0, computed_total = 0, min_hist = -1, max_hist = 0;
  int first_equal = 0, answers_equal = 0;
  double sum_re = 0, sum_ca = 0;
  for (const DemoTurn& d : rep.turns) {
    hit_t1 += d.hit_tokens_t1;
    hit_t2 += d.hit_tokens_t2;
    prompt_total += d.prompt_tokens;
    computed_total += d.computed_tokens;
    first_equal += d.first_token_equal;
    answers_equal += d.answer_equal;
    sum_re += d.ttft_recompute_ms;
    sum_ca += d.ttft_cached_ms;
    if (d.turn == rep.options.turns) {
      min_hist = min_hist < 0 ? d.history_tokens : std::min(min_hist, d.history_tokens);
      max_hist = std::max(max_hist, d.history_tokens);
    }
  }
  out << "\n";
  out << Printf("last-turn TTFT cached / recompute (mean over %d sessions, history %s-%s tokens): %.3f  (%.1fx faster)\n",
                rep.options.sessions, Thousands(std::max<int64_t>(min_hist, 0)).c_str(), Thousands(max_hist).c_str(),
                rep.last_turn_ttft_ratio, rep.last_turn_ttft_ratio > 0 ? 1.0 / rep.last_turn_ttft_ratio : 0.0);
  out << Printf("engine overhead on cached turns (TTFT outside the forward pass and the KV lookup/pinning): %.1f%%\n",
                100.0 * rep.engine_overhead_fraction);
  out << Printf("all turns: TTFT total %.1f ms recompute vs %.1f ms cached; prompt tokens %s, prefilled in the cached run %s (%.1f%%)\n",
                sum_re, sum_ca, Thousands(prompt_total).c_str(), Thousands(computed_total).c_str(),
                prompt_total > 0 ? 100.0 * computed_total / prompt_total : 0.0);
  out << Printf("max |logit diff| cached vs recompute (last prompt position, every turn): %s (tolerance %.1e); "
                "first generated token equal in %d/%zu turns, whole answer in %d/%zu\n",
                std::isnan(rep.max_abs_logit_diff) ? "n/a" : Printf("%.2e", rep.max_abs_logit_diff).c_str(),
                rep.logit_tolerance, first_equal, rep.turns.size(), answers_equal, rep.turns.size());
  auto stats = nlohmann::json::parse(rep.store_stats_json.empty() ? "{}" : rep.store_stats_json, nullptr, false);
  auto u = [&](const char* key) -> unsigned long long {
    if (!stats.is_object() || !stats.contains(key) || !stats[key].is_number()) return 0;
    return stats[key].get<unsigned long long>();
  };
  out << Printf("reused prefix tokens: %s from DRAM (t1), %s from SSD (t2)\n", Thousands(hit_t1).c_str(),
                Thousands(hit_t2).c_str());
  out << Printf("store (incl. one warm-up request): lookups %llu; hits t1 %llu tokens / %llu chunks, t2 %llu tokens / "
                "%llu chunks, misses %llu tokens; T1 evictions %llu, promotions T2->T1 %llu, dropped unpersisted %llu; "
                "errors io %llu corruption %llu load-miss %llu\n",
                u("lookups"), u("hit_tokens_t1"), u("hit_chunks_t1"), u("hit_tokens_t2"), u("hit_chunks_t2"),
                u("miss_tokens"), u("t1_evictions"), u("promotions"), u("t1_dropped_unpersisted"), u("err_io"),
                u("err_corruption"), u("err_load_miss"));
  out << Printf("store occupancy: T1 %s of %s, T2 %s of %s (%llu entries)\n", Bytes(u("t1_used_bytes")).c_str(),
                Bytes(u("t1_capacity_bytes")).c_str(), Bytes(u("t2_used_bytes")).c_str(),
                Bytes(u("t2_capacity_bytes")).c_str(), u("t2_entries"));
  out << Printf("runtime: run 1 (recompute) %.1f s, run 2 (cached) %.1f s, total %.1f s\n", rep.run_recompute_s,
                rep.run_cached_s, rep.total_s);
  if (!rep.chart_path.empty()) out << "chart: " << rep.chart_path << "\n";
  return out.str();
}

std::string DemoJson(const DemoReport& rep) {
  using json = nlohmann::ordered_json;
  auto num = [](double v) -> json { return std::isfinite(v) ? json(v) : json(nullptr); };
  json j;
  j["model"] = rep.model_name;
  json model;
  model["name"] = rep.model_name;
  model["description"] = rep.model_description;
  model["load_s"] = rep.model_load_s;
  model["source"] = rep.model_source;
  model["dtype"] = rep.dtype;
  model["device"] = rep.device;
  model["params"] = rep.params;
  model["kv_bytes_per_token"] = rep.kv_bytes_per_token;
  model["config"] = json::parse(rep.model_config_json.empty() ? "{}" : rep.model_config_json, nullptr, false);
  j["model_info"] = model;
  const DemoOptions& o = rep.options;
  j["settings"] = {{"sessions", o.sessions},
                   {"turns", o.turns},
                   {"random_model", o.random_model},
                   {"document_tokens", o.document_tokens},
                   {"system_tokens", rep.system_tokens},
                   {"user_tokens_min", o.user_min_tokens},
                   {"user_tokens_max", o.user_max_tokens},
                   {"max_new_tokens", o.max_new_tokens},
                   {"chunk_tokens", o.chunk_tokens},
                   {"threads", rep.threads},
                   {"seed", o.seed},
                   {"data_dir", o.data_dir},
                   {"dram_bytes", rep.t1_bytes},
                   {"dram_cap", rep.t1_reason},
                   {"ssd_bytes", rep.t2_bytes},
                   {"evict_dram", o.evict_t1}};
  json turns = json::array();
  for (const DemoTurn& d : rep.turns) {
    json t;
    t["session"] = d.session;
    t["turn"] = d.turn;
    t["history_tokens"] = d.history_tokens;
    t["new_tokens"] = d.new_tokens;
    t["prompt_tokens"] = d.prompt_tokens;
    t["ttft_recompute_ms"] = num(d.ttft_recompute_ms);
    t["ttft_cached_ms"] = num(d.ttft_cached_ms);
    t["ttft_ratio"] = num(d.ratio());
    t["hit_tokens"] = d.hit_tokens;
    t["hit_tokens_t1"] = d.hit_tokens_t1;
    t["hit_tokens_t2"] = d.hit_tokens_t2;
    t["hit_tokens_t3"] = d.hit_tokens_t3;
    t["tier"] = d.tier;
    t["computed_tokens"] = d.computed_tokens;
    t["dropped_tokens"] = d.dropped_tokens;
    t["load_wait_ms"] = num(d.load_wait_ms);
    t["lookup_ms"] = num(d.lookup_ms);
    t["forward_ms"] = num(d.forward_ms);
    t["max_abs_logit_diff"] = num(d.max_abs_logit_diff);
    t["first_token_equal"] = d.first_token_equal;
    t["answer_equal"] = d.answer_equal;
    t["answer_identical"] = d.answer_equal;
    if (!o.random_model) {
      t["question"] = d.question;
      t["answer"] = d.answer;
    }
    turns.push_back(t);
  }
  j["turns"] = turns;
  j["answers_identical"] = rep.answers_identical;
  j["max_abs_logit_diff"] = num(rep.max_abs_logit_diff);
  j["logit_tolerance"] = rep.logit_tolerance;
  j["last_turn_ttft_ratio"] = num(rep.last_turn_ttft_ratio);
  j["engine_overhead_fraction"] = num(rep.engine_overhead_fraction);
  int first_equal = 0;
  for (const DemoTurn& d : rep.turns) first_equal += d.first_token_equal;
  j["first_token_equal_turns"] = first_equal;
  j["store"] = json::parse(rep.store_stats_json.empty() ? "{}" : rep.store_stats_json, nullptr, false);
  j["runtime_s"] = {{"recompute", rep.run_recompute_s}, {"cached", rep.run_cached_s}, {"total", rep.total_s}};
  j["chart"] = rep.chart_path;
  return j.dump(2);
}

std::string DemoChartSvg(const DemoReport& rep) {
  BarChart c;
  c.title = "kvault demo: time to first token, full recompute vs cached KV";
  c.subtitle = Printf("%d conversations x %d turns, shared %d-token system prompt. Last turn: cached / recompute = %.3f "
                      "(mean over sessions), max |logit diff| %s",
                      rep.options.sessions, rep.options.turns, static_cast<int>(rep.system_tokens), rep.last_turn_ttft_ratio,
                      std::isnan(rep.max_abs_logit_diff) ? "n/a" : Printf("%.1e", rep.max_abs_logit_diff).c_str());
  c.y_label = "time to first token (ms)";
  c.series = {{"full recompute (store off)", "#d1603d"}, {"cached KV (store on: DRAM + SSD)", "#2b6cb0"}};
  std::vector<const DemoTurn*> order;
  for (const DemoTurn& d : rep.turns) order.push_back(&d);
  std::stable_sort(order.begin(), order.end(), [](const DemoTurn* a, const DemoTurn* b) {
    return a->session != b->session ? a->session < b->session : a->turn < b->turn;
  });
  for (const DemoTurn* d : order) {
    BarGroup g;
    g.label = "T" + std::to_string(d->turn);
    g.sublabels = {d->prompt_tokens >= 1000 ? Printf("%.1fk tok", d->prompt_tokens / 1000.0)
                                            : Printf("%lld tok", static_cast<long long>(d->prompt_tokens)),
                   TierLabel(d->tier)};
    g.values = {d->ttft_recompute_ms, d->ttft_cached_ms};
    g.cluster = "Session " + std::to_string(d->session);
    c.groups.push_back(std::move(g));
  }
  c.notes = {
      "Each group is one turn (T1, T2, ...) of one conversation; 'tok' = prompt tokens (history + new user message).",
      "Under it, where the cached run found the prefix: t1 = host DRAM, t2 = local SSD (slowest tier used), miss = nothing cached.",
      "Model: " + rep.model_description,
      Printf("Device %s, threads: %d. DRAM cap %s, SSD cap %s. Both runs see identical prompts (run 1's answers are replayed).",
             rep.device.c_str(), rep.threads, Bytes(rep.t1_bytes).c_str(), Bytes(rep.t2_bytes).c_str()),
  };
  return charts::RenderBarChartSvg(c);
}

}  // namespace kvault::demo
