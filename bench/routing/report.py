"""Numbers from turn records, the issue's targets, and the markdown published in docs/routing.md."""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

POLICY_LABELS = {
    "round-robin": "round-robin",
    "least-loaded": "least-in-flight",
    "classic": "seed (SPEC Part A)",
    "cache-aware": "**cache-aware (ours)**",
}
BEGIN, END = "<!-- routing-bench:begin -->", "<!-- routing-bench:end -->"

# The targets for the cache-aware policy.
W1_BOUND_SHARE = 0.95  # hit ratio >= 95 % of the upper bound
W2_HIT_VS_RR = 3.5  # hit ratio >= 3.5x round-robin's
W2_TTFT_VS_RR = 0.3  # TTFT p50 <= 0.3x round-robin's
W3_TPUT_VS_LL = 1.0  # throughput no worse than least-in-flight's


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def summarize(turns: Iterable[dict[str, Any]], errors: Sequence[str], duration_s: float,
              elapsed_s: float) -> dict[str, Any]:
    """One (workload, policy) run in numbers; see docs/routing.md for each definition."""
    turns = list(turns)
    prompt = sum(t["cache_n"] + t["prompt_n"] for t in turns)
    cached = sum(t["cache_n"] for t in turns)
    expected = sum(t["expected_prompt_tokens"] for t in turns)
    window = min(duration_s, elapsed_s) if elapsed_s > 0 else duration_s  # smoke runs end early
    in_window = [t for t in turns if t["end_s"] <= window]
    ttfts = [t["ttft_s"] for t in turns]
    mismatched = sum(1 for t in turns if t["prompt_tokens"] != t["cache_n"] + t["prompt_n"]
                     or t["prompt_tokens"] != t["expected_prompt_tokens"])
    return {
        "turns": len(turns),
        "conversations": len({t["conversation"] for t in turns}),
        "errors": len(errors),
        "error_samples": list(errors[:5]),
        "token_mismatches": mismatched,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "hit_ratio": _ratio(cached, prompt),
        "bound_ratio": _ratio(sum(t["bound_cached"] for t in turns), expected),
        "sim_bound_ratio": _ratio(sum(t["sim_bound_cached"] for t in turns), expected),
        "ttft_p50_ms": _ms(percentile(ttfts, 0.5)),
        "ttft_p90_ms": _ms(percentile(ttfts, 0.9)),
        "ttft_p99_ms": _ms(percentile(ttfts, 0.99)),
        "turns_per_s": len(in_window) / window if window > 0 else None,
        "gen_tokens_per_s": sum(t["completion_tokens"] for t in in_window) / window if window > 0 else None,
        "prompt_tokens_per_s": sum(t["prompt_tokens"] for t in in_window) / window if window > 0 else None,
        "by_server": dict(sorted(Counter(t["server"] or "?" for t in turns).items())),
        "reasons": dict(sorted(reasons_of(turns).items())),
        "queue_wait_p50_ms": percentile([t["queue_wait_ms"] or 0.0 for t in turns if "queue_wait_ms" in t], 0.5),
        "elapsed_s": elapsed_s,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def read_access_log(path: Path) -> dict[str, dict[str, Any]]:
    """request id -> the balancer's record of it (reason, server, queue_wait_ms ...)."""
    import orjson

    out: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("request_id"):
                out[str(entry["request_id"])] = entry
    return out


def reasons_of(turns: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Counts of the balancer's routing reasons (sticky, prefix, least-loaded ...)."""
    return dict(Counter(str(t.get("reason")) for t in turns if t.get("reason")))


# ----------------------------------------------------------------------------- verdicts

def verdicts(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The issue's targets, judged where the run has the policies they compare."""
    out: list[dict[str, Any]] = []

    def get(wl: str, policy: str, key: str) -> float | None:
        return results.get(wl, {}).get(policy, {}).get(key)

    ours = "cache-aware"
    if get("W1", ours, "hit_ratio") is not None:
        hit, bound = get("W1", ours, "hit_ratio"), get("W1", ours, "bound_ratio")
        share = _ratio(hit or 0.0, bound or 0.0)
        out.append(_verdict("W1", f"hit ratio >= {W1_BOUND_SHARE:.0%} of the upper bound",
                            share, W1_BOUND_SHARE, ">=", f"{_pct(hit)} of {_pct(bound)}"))
    for wl in ("W2", "W2m"):  # W2m: W2's targets at moderate load, for reference
        note = " (reference: W2's target)" if wl == "W2m" else ""
        hit, rr_hit = get(wl, ours, "hit_ratio"), get(wl, "round-robin", "hit_ratio")
        if hit is not None and rr_hit is not None:
            out.append(_verdict(wl, f"hit ratio >= {W2_HIT_VS_RR}x round-robin's{note}", _ratio(hit, rr_hit),
                                W2_HIT_VS_RR, ">=", f"{_pct(hit)} vs {_pct(rr_hit)}"))
        p50, rr_p50 = get(wl, ours, "ttft_p50_ms"), get(wl, "round-robin", "ttft_p50_ms")
        if p50 is not None and rr_p50 is not None:
            out.append(_verdict(wl, f"TTFT p50 <= {W2_TTFT_VS_RR}x round-robin's{note}", _ratio(p50, rr_p50),
                                W2_TTFT_VS_RR, "<=", f"{p50:.0f} ms vs {rr_p50:.0f} ms"))
    tput, ll_tput = get("W3", ours, "turns_per_s"), get("W3", "least-loaded", "turns_per_s")
    if tput is not None and ll_tput is not None:
        out.append(_verdict("W3", "throughput no worse than least-in-flight's", _ratio(tput, ll_tput),
                            W3_TPUT_VS_LL, ">=", f"{tput:.2f} vs {ll_tput:.2f} turns/s"))
    for wl, policies in results.items():
        for policy, summary in policies.items():
            if summary.get("errors"):
                out.append({"workload": wl, "target": f"0 errors ({policy})", "value": summary["errors"],
                            "limit": 0, "hold": False, "detail": "; ".join(summary.get("error_samples", []))})
    return out


def _verdict(wl: str, target: str, value: float | None, limit: float, op: str, detail: str) -> dict[str, Any]:
    hold = value is not None and (value >= limit if op == ">=" else value <= limit)
    return {"workload": wl, "target": target, "value": value, "limit": limit, "hold": hold, "detail": detail}


# ----------------------------------------------------------------------------- markdown

def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.1f} %"


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def workload_table(policies: dict[str, dict[str, Any]]) -> str:
    rr, ll = policies.get("round-robin"), policies.get("least-loaded")
    head = ("| policy | turns | hit ratio | vs RR | vs LIF | TTFT p50 ms | vs RR | vs LIF | TTFT p99 ms "
            "| queued p50 ms | turns/s | vs RR | vs LIF | errors | turns per backend |")
    lines = [head, "|" + "---|" * 15]
    for policy, s in policies.items():
        def rel(key: str, base: dict[str, Any] | None) -> str:
            if base is None or s.get(key) is None or not base.get(key):
                return "—"
            return _x(s[key] / base[key])

        servers = " ".join(f"{k}:{v}" for k, v in s["by_server"].items())
        lines.append(
            f"| {POLICY_LABELS.get(policy, policy)} | {s['turns']} | {_pct(s['hit_ratio'])} | {rel('hit_ratio', rr)} "
            f"| {rel('hit_ratio', ll)} | {_num(s['ttft_p50_ms'])} | {rel('ttft_p50_ms', rr)} | {rel('ttft_p50_ms', ll)} "
            f"| {_num(s['ttft_p99_ms'])} | {_num(s.get('queue_wait_p50_ms'))} "
            f"| {_num(s['turns_per_s'], '{:.2f}')} | {rel('turns_per_s', rr)} "
            f"| {rel('turns_per_s', ll)} | {s['errors']} | {servers} |")
    ours = policies.get("cache-aware") or next(iter(policies.values()))
    lines.append(f"| upper bound (whole previous prompt + reply cached) | — | {_pct(ours['bound_ratio'])} "
                 f"| {_x(_ratio(ours['bound_ratio'], rr['hit_ratio'])) if rr and rr['hit_ratio'] else '—'} "
                 f"| {_x(_ratio(ours['bound_ratio'], ll['hit_ratio'])) if ll and ll['hit_ratio'] else '—'} "
                 "| — | — | — | — | — | — | — | — | — | — |")
    lines.append(f"| sim-reachable bound (previous prompt cached, reply not) | — | {_pct(ours['sim_bound_ratio'])} "
                 "| — | — | — | — | — | — | — | — | — | — | — | — |")
    return "\n".join(lines)


def reasons_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    rows = []
    for wl, policies in results.items():
        for policy, s in policies.items():
            if s.get("reasons"):
                rows.append(f"| {wl} | {policy} | " + ", ".join(f"{k} {v}" for k, v in s["reasons"].items()) + " |")
    if not rows:
        return ""
    return "\n".join(["| workload | policy | balancer's routing reasons (access log) |", "|---|---|---|", *rows])


def render(meta: dict[str, Any], workloads: dict[str, dict[str, Any]],
           results: dict[str, dict[str, dict[str, Any]]], verdict_list: list[dict[str, Any]]) -> str:
    out = [f"Run {meta['date']} on {meta['machine']}; took {meta['took_s'] / 60:.1f} min.",
           "", "```sh", meta["command"], "```", ""]
    out.append(f"Settings: seed {meta['seed']}, identity `{meta['identity']}`, server kind `{meta['kind']}`"
               + (f", routing overrides `{meta['routing']}`" if meta.get("routing") else "")
               + (f", balancer overrides `{meta['balancer']}`" if meta.get("balancer") else "") + ".")
    out.append("")
    if verdict_list:
        out += ["### Targets (cache-aware)", "", "| workload | target | measured | value | verdict |",
                "|---|---|---|---|---|"]
        for v in verdict_list:
            value = v["value"]
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            out.append(f"| {v['workload']} | {v['target']} | {v['detail']} | {shown} | "
                       f"{'**hold**' if v['hold'] else '**miss**'} |")
        out.append("")
    for wl, policies in results.items():
        spec = workloads[wl]
        backends = ", ".join(f"{b['name']} {b['prompt_tps']:g}/{b['gen_tps']:g}" for b in spec["backends"])
        out += [f"### {wl}: {spec['title']}", "",
                f"{spec['conversations']} conversations for {spec['duration_s']:g} s; system prompts "
                f"{', '.join(map(str, spec['system_tokens']))} tokens; {spec['turns'][0]}-{spec['turns'][1]} turns; "
                f"user messages {spec['user_tokens'][0]}-{spec['user_tokens'][1]} tokens; max_tokens "
                f"{spec['max_tokens']}; think {spec['think_s'][0]:g}-{spec['think_s'][1]:g} s; backends "
                f"(prompt/gen tokens per s, {spec['backends'][0]['slots']} slots each): {backends}.", "",
                workload_table(policies), ""]
    reasons = reasons_table(results)
    if reasons:
        out += ["### How the balancer placed requests", "", reasons, ""]
    return "\n".join(out)


def update_doc(path: Path, section: str, template: str) -> None:
    """Replace the text between the markers (the rest of the file is written by hand)."""
    text = path.read_text() if path.exists() else template
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{section.strip()}\n{END}", text, count=1))
