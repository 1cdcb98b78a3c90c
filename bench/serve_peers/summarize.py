#!/usr/bin/env python3
"""Joins what bench/serve_peers/run.sh collected for each server mode into OUT/<mode>.json and
writes OUT/summary.md. Standard library only.

Per mode, run.sh leaves under OUT/raw/:
  <mode>.sweep.json      `kvault bench serve --sweep --json` before the restart
  <mode>.replay.json     `kvault bench serve --json` after the restart: the sweep's first rate
                         with the same seed, so the same sessions send the same first turns
  <mode>.meta            key=value lines: command, threads, start/restart seconds, peak RSS,
                         the unix times the sweep and the replay started
  <mode>.metrics.{1,2}.txt   kvault serve's /metrics before each stop (kvault modes)
  <mode>.usage.{1,2,3}.jsonl llamacpp_server.py's per-request log (llama.cpp modes)
  <mode>.live.json       `kvault bench serve --json` of the run with a restart under live traffic
  <mode>.<phase>.answers.jsonl  every request's answer (rate, session, turn, ok, answer)
  <mode>.rss.<phase>.txt "unix_time rss_kib" samples of the server every 2 s

    summarize.py OUT MODE [MODE ...]
"""
import json
import os
import re
import sys


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_meta(path):
    meta = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    meta[key] = value
    except OSError:
        pass
    return meta


def load_usage(path):
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return rows


def prom_counters(path):
    """{'name{labels}': value} of a Prometheus text file (None when absent)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+)\s+(\S+)$", line)
        if m:
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                pass
    return out


def store_figures(counters):
    """The tier figures a reader needs, from kvault serve's /metrics."""
    if counters is None:
        return None

    def get(name):
        return counters.get(name, 0.0)
    return {
        "prompt_tokens": get("kvault_serve_prompt_tokens_total"),
        "cached_prompt_tokens": get("kvault_serve_cached_prompt_tokens_total"),
        "lookup_hit_tokens_t1": get('kvault_lookup_tokens_total{result="hit",tier="t1"}'),
        "lookup_hit_tokens_t2": get('kvault_lookup_tokens_total{result="hit",tier="t2"}'),
        "lookup_miss_tokens": get('kvault_lookup_tokens_total{result="miss"}'),
        "t1_evictions": get('kvault_evictions_total{tier="t1"}'),
        "t2_evictions": get('kvault_evictions_total{tier="t2"}'),
        "promotions": get("kvault_promotions_total"),
        "prefetches": get("kvault_prefetches_total"),
        "bytes_prefetched": get('kvault_bytes_total{path="prefetch"}'),
        "t1_dropped_unpersisted": get("kvault_t1_dropped_unpersisted_total"),
        "errors_5xx": get('kvault_serve_errors_total{class="5xx"}'),
    }


def fraction(cached, prompt):
    return cached / prompt if prompt else None


def usage_by_run(rows, start, runs):
    """Splits a llama.cpp usage log over the sweep's runs, which ran one after the other from
    `start` (unix s), each `elapsed_s` long: a request belongs to the run during which its first
    token came. Returns [(prompt_tokens, cached_tokens, requests)] per run."""
    bounds, t = [], start
    for run in runs:
        t += float(run.get("elapsed_s") or 0)
        bounds.append(t)
    sums = [[0, 0, 0] for _ in runs]
    for row in rows:
        i = next((k for k, b in enumerate(bounds) if row["t"] <= b + 0.5), len(runs) - 1)
        if 0 <= i < len(sums):
            sums[i][0] += row["prompt_tokens"]
            sums[i][1] += row["cached_tokens"]
            sums[i][2] += 1
    return sums


def load_answers(path):
    """{(rate, session, turn): answer} of the completed requests of an answers log."""
    out = {}
    for row in load_usage(path):
        if row.get("ok"):
            out[(row.get("rate"), row.get("session"), row.get("turn"))] = row.get("answer")
    return out


def compare_answers(mine, reference):
    """How many requests that completed in both runs got the same answer."""
    common = [k for k in mine if k in reference]
    equal = sum(1 for k in common if mine[k] == reference[k])
    return {"compared": len(common), "equal": equal}


def rss_figures(path):
    """Resident memory over a phase: after its first quarter, at its end, and its maximum (MiB).
    Flat memory: the end is not above the first quarter's level by more than noise."""
    samples = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    samples.append(int(parts[1]))
    except (OSError, ValueError):
        return None
    if len(samples) < 4:
        return None
    mib = lambda kib: round(kib / 1024, 1)
    quarter = samples[len(samples) // 4]
    return {"samples": len(samples), "quarter_mib": mib(quarter), "end_mib": mib(samples[-1]),
            "max_mib": mib(max(samples)), "growth_mib": mib(samples[-1] - quarter)}


def turn1(run):
    turns = run.get("by_turn") or []
    return turns[0] if turns else {}


def mode_json(out_dir, mode):
    raw = os.path.join(out_dir, "raw")
    sweep = load_json(os.path.join(raw, mode + ".sweep.json"))
    replay = load_json(os.path.join(raw, mode + ".replay.json"))
    meta = load_meta(os.path.join(raw, mode + ".meta"))
    llama = mode.startswith("llamacpp")
    result = {"mode": mode, "label": mode, "server_command": meta.get("command"),
              "threads": int(meta["threads"]) if meta.get("threads") else None,
              "model_file": meta.get("model"), "error": meta.get("error")}
    if sweep is None:
        result["error"] = result["error"] or "no sweep result"
        return result
    runs = sweep.get("rates", [])
    result.update({k: sweep.get(k) for k in ("model", "turns_per_session", "think_s", "documents_per_session",
                                            "max_tokens", "duration_s", "timeout_s", "seed", "slo_ttft_ms",
                                            "max_rate_at_slo")})
    result["rates"] = runs
    cached_source = "usage"
    if llama:
        cached_source = "server log (llamacpp_server.py --usage-log)"
        rows = load_usage(os.path.join(raw, mode + ".usage.1.jsonl"))
        start = float(meta.get("sweep_started_at") or 0)
        for run, (p, c, n) in zip(runs, usage_by_run(rows, start, runs)):
            run["server_log_requests"] = n
            run["server_log_prompt_tokens"] = p
            run["server_log_cached_tokens"] = c
            run["cached_token_fraction"] = fraction(c, p)
    result["cached_source"] = cached_source
    result["peak_rss_mib"] = [round(int(meta[k]) / 1024, 1) for k in ("rss_peak_kib_1", "rss_peak_kib_2")
                              if meta.get(k, "").isdigit()]
    result["start_s"] = float(meta["start_s"]) if meta.get("start_s") else None
    result["store_before_restart"] = store_figures(prom_counters(os.path.join(raw, mode + ".metrics.1.txt")))
    restart = {"restart_s": float(meta["restart_s"]) if meta.get("restart_s") else None,
               "stop_s": float(meta["stop_s"]) if meta.get("stop_s") else None}
    if replay is not None:
        if llama:
            rows = load_usage(os.path.join(raw, mode + ".usage.2.jsonl"))
            p = sum(r["prompt_tokens"] for r in rows)
            c = sum(r["cached_tokens"] for r in rows)
            replay["server_log_requests"] = len(rows)
            replay["server_log_prompt_tokens"] = p
            replay["server_log_cached_tokens"] = c
            replay["cached_token_fraction"] = fraction(c, p)
        cold = runs[0] if runs else {}
        restart.update({
            "replay": replay,
            "cold_cached_token_fraction": cold.get("cached_token_fraction"),
            "replay_cached_token_fraction": replay.get("cached_token_fraction"),
            "cold_turn1_ttft_p50_ms": turn1(cold).get("ttft_p50_ms"),
            "replay_turn1_ttft_p50_ms": turn1(replay).get("ttft_p50_ms"),
            "replay_turn1_cached_tokens": turn1(replay).get("cached_tokens") if not llama else None,
            "replay_turn1_prompt_tokens": turn1(replay).get("prompt_tokens") if not llama else None,
        })
        restart["store_after_restart"] = store_figures(prom_counters(os.path.join(raw, mode + ".metrics.2.txt")))
    result["restart"] = restart
    live = load_json(os.path.join(raw, mode + ".live.json"))
    if live is not None:
        if llama:
            rows = load_usage(os.path.join(raw, mode + ".usage.3.jsonl")) + [
                r for r in load_usage(os.path.join(raw, mode + ".usage.2.jsonl"))
                if r["t"] >= float(meta.get("live_started_at") or 0)]
            p = sum(r["prompt_tokens"] for r in rows)
            live["cached_token_fraction"] = fraction(sum(r["cached_tokens"] for r in rows), p)
        result["live_restart"] = {"restart_s": float(meta["live_restart_s"]) if meta.get("live_restart_s") else None,
                                  "run": live}
    result["rss"] = {phase: rss_figures(os.path.join(raw, f"{mode}.rss.{phase}.txt"))
                     for phase in ("sweep", "replay", "live")}
    return result


def headline_run(m):
    """The run a table row shows: the highest rate that holds the SLO, else the lowest rate."""
    runs = m.get("rates") or []
    best = m.get("max_rate_at_slo") or 0
    for run in runs:
        if best and abs(run["offered_rate"] - best) < 1e-9:
            return run, True
    return (runs[0], False) if runs else (None, False)


def fmt(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, float) and digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}" if isinstance(v, (int, float)) else str(v)


def pct(v):
    return "–" if v is None else f"{100 * v:.1f}%"


def kept_text(m):
    r = m.get("restart") or {}
    if "replay" not in r:
        return "–"
    cold, rep = r.get("cold_cached_token_fraction"), r.get("replay_cached_token_fraction")
    t_cold, t_rep = r.get("cold_turn1_ttft_p50_ms"), r.get("replay_turn1_ttft_p50_ms")
    text = f"cached {pct(cold)} → {pct(rep)}; turn-1 TTFT p50 {fmt(t_cold)} → {fmt(t_rep)} ms"
    if r.get("replay_turn1_prompt_tokens"):
        text += f"; turn 1 {fmt(r['replay_turn1_cached_tokens'])}/{fmt(r['replay_turn1_prompt_tokens'])} tok cached"
    return text


def summary_md(modes):
    lines = []
    first = next((m for m in modes if m.get("rates")), None)
    if first:
        lines.append(f"Workload: {first.get('turns_per_session')} turns per session, "
                     f"{first.get('documents_per_session')} document(s), think {first.get('think_s')} s, "
                     f"max_tokens {first.get('max_tokens')}, {first.get('duration_s')} s of arrivals per rate, "
                     f"seed {first.get('seed')}, SLO p90 TTFT ≤ {fmt(first.get('slo_ttft_ms'))} ms; "
                     f"threads {first.get('threads')}; model {first.get('model_file')}.")
        lines.append("")
    lines.append("| mode | sessions/s at SLO | row's rate | sessions | requests (failed) | TTFT p50 / p90 ms "
                 "| tpot ms | cached | restart s | after restart: same sessions again (cold → replay) | peak RSS MiB |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for m in modes:
        if m.get("error") and not m.get("rates"):
            lines.append(f"| {m['mode']} | failed: {m['error']} | | | | | | | | | |")
            continue
        run, holds = headline_run(m)
        if run is None:
            continue
        best = m.get("max_rate_at_slo")
        best_text = fmt(best, 3).rstrip("0").rstrip(".") if best else f"< {fmt(run['offered_rate'], 3).rstrip('0').rstrip('.')}"
        rate_text = f"{run['offered_rate']:g}" + ("" if holds else " (breaks)")
        lines.append(
            f"| {m['mode']} | {best_text} | {rate_text} | {run.get('sessions')} | {run.get('sent')} ({run.get('failed')}) "
            f"| {fmt(run.get('ttft_p50_ms'))} / {fmt(run.get('ttft_p90_ms'))} | {fmt(run.get('tpot_ms'))} "
            f"| {pct(run.get('cached_token_fraction'))} | {fmt((m.get('restart') or {}).get('restart_s'), 1)} "
            f"| {kept_text(m)} | {' / '.join(fmt(x) for x in m.get('peak_rss_mib', [])) or '–'} |")
    lines.append("")
    lines.append("Every rate tried:")
    lines.append("")
    lines.append("| mode | sessions/s | sessions | requests (failed) | TTFT p50 / p90 / p99 ms | tpot ms | ITL p99 ms | cached | goodput req/s | SLO |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for m in modes:
        for run in m.get("rates") or []:
            lines.append(
                f"| {m['mode']} | {run['offered_rate']:g} | {run.get('sessions')} | {run.get('sent')} ({run.get('failed')}) "
                f"| {fmt(run.get('ttft_p50_ms'))} / {fmt(run.get('ttft_p90_ms'))} / {fmt(run.get('ttft_p99_ms'))} "
                f"| {fmt(run.get('tpot_ms'))} | {fmt(run.get('itl_p99_ms'))} | {pct(run.get('cached_token_fraction'))} | {fmt(run.get('goodput_rps'), 2)} "
                f"| {'holds' if run.get('meets_slo') else 'breaks'} |")
        rep = (m.get("restart") or {}).get("replay")
        if rep:
            lines.append(
                f"| {m['mode']} after restart | {rep['offered_rate']:g} | {rep.get('sessions')} | {rep.get('sent')} ({rep.get('failed')}) "
                f"| {fmt(rep.get('ttft_p50_ms'))} / {fmt(rep.get('ttft_p90_ms'))} / {fmt(rep.get('ttft_p99_ms'))} "
                f"| {fmt(rep.get('tpot_ms'))} | {fmt(rep.get('itl_p99_ms'))} | {pct(rep.get('cached_token_fraction'))} | {fmt(rep.get('goodput_rps'), 2)} "
                f"| {'holds' if rep.get('meets_slo') else 'breaks'} |")
    stores = [(m["mode"], m.get("store_before_restart"), (m.get("restart") or {}).get("store_after_restart"))
              for m in modes if (m.get("store_before_restart") or {}).get("lookup_hit_tokens_t1", 0) + (m.get("store_before_restart") or {}).get("lookup_miss_tokens", 0) > 0]
    if stores:
        lines.append("")
        lines.append("kvault's store (tokens found per tier; /metrics before each stop):")
        lines.append("")
        lines.append("| mode | phase | hit T1 | hit T2 | miss | T1 evictions | promotions | prefetched chunks | T1 dropped unpersisted |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for mode, before, after in stores:
            for phase, s in (("sweep", before), ("after restart", after)):
                if s:
                    lines.append(f"| {mode} | {phase} | {fmt(s['lookup_hit_tokens_t1'])} | {fmt(s['lookup_hit_tokens_t2'])} "
                                 f"| {fmt(s['lookup_miss_tokens'])} | {fmt(s['t1_evictions'])} | {fmt(s['promotions'])} "
                                 f"| {fmt(s['prefetches'])} | {fmt(s['t1_dropped_unpersisted'])} |")
    lines.append("")
    lines.append("Answers (greedy), memory and a restart under live traffic:")
    lines.append("")
    lines.append("| mode | answers = kvault-nocache's (same session and turn) | replay after restart = sweep | "
                 "RSS MiB over the sweep: after 1/4 → end (max) | live restart: failed / sent, restart s, "
                 "cached, TTFT p90 ms |")
    lines.append("|---|---:|---:|---:|---|")
    for m in modes:
        a = m.get("answers_vs_kvault_nocache")
        r = m.get("answers_replay_vs_sweep")
        rss = (m.get("rss") or {}).get("sweep")
        live = m.get("live_restart") or {}
        run = live.get("run") or {}
        a_text = f"{a['equal']}/{a['compared']}" if a else "–"
        r_text = f"{r['equal']}/{r['compared']}" if r else "–"
        rss_text = f"{fmt(rss['quarter_mib'])} → {fmt(rss['end_mib'])} ({fmt(rss['max_mib'])})" if rss else "–"
        live_text = (f"{run.get('failed')} / {run.get('sent')}, {fmt(live.get('restart_s'), 1)} s, "
                     f"{pct(run.get('cached_token_fraction'))}, {fmt(run.get('ttft_p90_ms'))}") if run else "–"
        lines.append(f"| {m['mode']} | {a_text} | {r_text} | {rss_text} | {live_text} |")
    errors = [(m["mode"], m["error"]) for m in modes if m.get("error")]
    if errors:
        lines.append("")
        for mode, err in errors:
            lines.append(f"- {mode}: {err}")
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out_dir, names = sys.argv[1], sys.argv[2:]
    modes = []
    raw = os.path.join(out_dir, "raw")
    reference = load_answers(os.path.join(raw, "kvault-nocache.sweep.answers.jsonl"))
    for name in names:
        m = mode_json(out_dir, name)
        mine = load_answers(os.path.join(raw, name + ".sweep.answers.jsonl"))
        if reference and name != "kvault-nocache":
            m["answers_vs_kvault_nocache"] = compare_answers(mine, reference)
        replayed = load_answers(os.path.join(raw, name + ".replay.answers.jsonl"))
        if replayed:  # the replay repeats the sweep's first rate with the same seed
            m["answers_replay_vs_sweep"] = compare_answers(replayed, mine)
        with open(os.path.join(out_dir, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(m, f, indent=1)
            f.write("\n")
        modes.append(m)
    md = summary_md(modes)
    with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(md)
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
