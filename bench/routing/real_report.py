"""Numbers of the real-server bench, its targets, and the section published in docs/routing.md."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from .report import percentile

LABELS = {
    "round-robin": "round-robin",
    "least-loaded": "least-loaded",
    "classic": "classic (the seed's)",
    "cache-aware": "**cache-aware (ours)**",
    "sglang-router": "sglang-router 0.3.2 (`cache_aware`)",
}
OURS = "cache-aware"
BEGIN, END = "<!-- routing-bench-real:begin -->", "<!-- routing-bench-real:end -->"

# The targets for cache-aware.
BASE_HIT_VS_BEST = 1.3  # hit ratio >= 1.3x the best other policy or peer (base, --cache-ram 0)
SKEW_HIT_VS_BEST = 1.2  # ... 1.2x in skew
SKEW_P90_VS_LL = 1.0  # TTFT p90 in skew no worse than least-loaded's
RAM_CEILING_SHARE = 0.95  # with the default --cache-ram: hit ratio >= 0.95 of the ceiling


def run_key(variant: str, cache_ram: bool) -> str:
    return f"{variant}+cache-ram" if cache_ram else variant


def summarize(turns: Sequence[dict[str, Any]], errors: Sequence[str], wall_s: float,
              per_server: dict[str, int], server_metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    prompt = sum(t["cache_n"] + t["prompt_n"] for t in turns)
    cached = sum(t["cache_n"] for t in turns)
    ttfts = [t["ttft_s"] * 1000.0 for t in turns]
    mismatched = sum(1 for t in turns if t.get("tokenized") is not None
                     and not (t["prompt_tokens"] == t["cache_n"] + t["prompt_n"] == t["tokenized"]))
    return {
        "turns": len(turns),
        "conversations": len({t["conversation"] for t in turns}),
        "errors": len(errors),
        "error_samples": list(errors[:5]),
        "token_mismatches": mismatched,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "hit_ratio": cached / prompt if prompt else None,
        "ceiling_ratio": _share(turns, "ceiling", prompt),
        "strict_ceiling_ratio": _share(turns, "strict_ceiling", prompt),
        "preamble_ratio": _share(turns, "preamble", prompt),
        "ttft_p50_ms": percentile(ttfts, 0.5),
        "ttft_p90_ms": percentile(ttfts, 0.9),
        "wall_s": wall_s,
        "per_server": per_server,
        "server_metrics": {n: {k: m.get(k) for k in ("prompt_tokens_total", "tokens_predicted_total",
                                                     "prompt_tokens_cached_total", "n_decode_total")}
                           for n, m in server_metrics.items()},
        "reasons": dict(sorted(Counter(str(t["reason"]) for t in turns if t.get("reason")).items())),
        "found": dict(sorted(Counter(found(t) for t in turns if found(t)).items())),
    }


def found(turn: dict[str, Any]) -> str | None:
    """What a turn found cached: ``history`` (its previous prompt, within a few tokens),
    ``preamble`` (its group's tool prompt, not its history), or ``less``; first turns are
    ``first: preamble`` or ``first: less``. None without the tokenizer's counts."""
    if turn.get("preamble") is None or turn.get("ceiling") is None:
        return None
    if turn["turn"] == 0:
        return "first: preamble" if turn["cache_n"] >= turn["preamble"] - 2 else "first: less"
    if turn["cache_n"] >= turn["ceiling"] - 8:  # the reply's last tokens may re-tokenize differently
        return "history"
    return "preamble" if turn["cache_n"] >= turn["preamble"] - 2 else "less"


def _share(turns: Iterable[dict[str, Any]], key: str, prompt: int) -> float | None:
    values = [t.get(key) for t in turns]
    if not prompt or any(v is None for v in values):
        return None
    return sum(values) / prompt  # type: ignore[arg-type]


def servers_from_log(turns: Iterable[dict[str, Any]], names: Iterable[str]) -> dict[str, int]:
    counts = {n: 0 for n in names}
    for t in turns:
        if t.get("server"):
            counts[t["server"]] = counts.get(t["server"], 0) + 1
    return counts


# ----------------------------------------------------------------------------- ceilings

def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def ceilings(turns: list[dict[str, Any]], tokens: dict[tuple[str, int], tuple[list[int], int]],
             preambles: Sequence[Sequence[int]] = ()) -> None:
    """Per turn, from the real tokenizer: ``tokenized`` (its prompt's tokens, a check on
    usage), ``ceiling`` (the issue's: every turn finds its previous prompt and reply cached; a
    first turn 0) and ``strict_ceiling`` (an unbounded cache: a first turn also finds the
    longest prefix any earlier request's prompt shares with it, i.e. its group's preamble).

    ``tokens[(conversation, turn)]`` = (the prompt's token ids, how many of them are the
    history through the previous reply). With ``preambles`` (each group's rendered tool
    prompt, tokenized), also ``preamble``: the tokens of the turn's prompt that are its
    group's preamble, what a policy keeping every group's preamble cached would reuse."""
    earlier: list[list[int]] = []
    for t in sorted(turns, key=lambda t: t["start_s"]):
        ids, history = tokens[(t["conversation"], t["turn"])]
        t["tokenized"] = len(ids)
        if preambles:
            t["preamble"] = common_prefix(ids, preambles[t["group"]])
        t["ceiling"] = history if t["turn"] > 0 else 0
        t["strict_ceiling"] = t["ceiling"] if t["turn"] > 0 else max(
            (common_prefix(ids, e) for e in earlier), default=0)
        earlier.append(ids)


# ----------------------------------------------------------------------------- verdicts

def verdicts(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def best_other(run: str) -> tuple[str | None, float | None]:
        others = [(p, s["hit_ratio"]) for p, s in results.get(run, {}).items()
                  if p != OURS and s.get("hit_ratio") is not None]
        return max(others, key=lambda x: x[1]) if others else (None, None)

    for run, limit in (("base", BASE_HIT_VS_BEST), ("skew", SKEW_HIT_VS_BEST)):
        ours = results.get(run, {}).get(OURS, {}).get("hit_ratio")
        who, best = best_other(run)
        if ours is not None and best is not None:
            out.append(_verdict(run, f"hit ratio >= {limit}x the best other ({who})",
                                ours / best if best else None, limit, ">=", f"{_pct(ours)} vs {_pct(best)}"))
    ours = results.get("skew", {}).get(OURS, {}).get("ttft_p90_ms")
    ll = results.get("skew", {}).get("least-loaded", {}).get("ttft_p90_ms")
    if ours is not None and ll is not None:
        out.append(_verdict("skew", "TTFT p90 no worse than least-loaded's", ours / ll if ll else None,
                            SKEW_P90_VS_LL, "<=", f"{ours:.0f} ms vs {ll:.0f} ms"))
    ram = run_key("base", True)
    s = results.get(ram, {}).get(OURS, {})
    if s.get("hit_ratio") is not None and s.get("ceiling_ratio"):
        out.append(_verdict(ram, f"hit ratio >= {RAM_CEILING_SHARE} of the ceiling", s["hit_ratio"] / s["ceiling_ratio"],
                            RAM_CEILING_SHARE, ">=", f"{_pct(s['hit_ratio'])} of {_pct(s['ceiling_ratio'])}"))
    for run, policies in results.items():
        for policy, summary in policies.items():
            if summary.get("errors"):
                out.append({"run": run, "target": f"0 errors ({policy})", "value": summary["errors"], "limit": 0,
                            "hold": False, "detail": "; ".join(summary.get("error_samples", []))[:300]})
    return out


def _verdict(run: str, target: str, value: float | None, limit: float, op: str, detail: str) -> dict[str, Any]:
    hold = value is not None and (value >= limit if op == ">=" else value <= limit)
    return {"run": run, "target": target, "value": value, "limit": limit, "hold": hold, "detail": detail}


# ----------------------------------------------------------------------------- markdown

def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100.0 * v:.1f} %"


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def _span(values: list[float]) -> str:
    low, high = _pct(min(values)), _pct(max(values))
    return low if low == high else f"{low}-{high}"


def run_table(policies: dict[str, dict[str, Any]]) -> str:
    lines = ["| policy | turns | hit ratio | vs best other | of ceiling | TTFT p50 ms | TTFT p90 ms "
             "| p90 vs least-loaded | wall s | requests per server | errors | other load |", "|" + "---|" * 12]
    ll = policies.get("least-loaded", {}).get("ttft_p90_ms")
    for policy, s in policies.items():
        others = [o["hit_ratio"] for p, o in policies.items() if p != policy and o.get("hit_ratio") is not None]
        vs = f"{s['hit_ratio'] / max(others):.2f}x" if others and s.get("hit_ratio") is not None and max(others) else "—"
        of = (f"{s['hit_ratio'] / s['ceiling_ratio']:.2f}" if s.get("ceiling_ratio") and s.get("hit_ratio") is not None
              else "—")
        p90 = f"{s['ttft_p90_ms'] / ll:.2f}x" if ll and s.get("ttft_p90_ms") is not None else "—"
        servers = " ".join(f"{k}:{v}" for k, v in s["per_server"].items())
        lines.append(f"| {LABELS.get(policy, policy)} | {s['turns']} | {_pct(s['hit_ratio'])} | {vs} | {of} "
                     f"| {_num(s['ttft_p50_ms'])} | {_num(s['ttft_p90_ms'])} | {p90} | {_num(s['wall_s'], '{:.1f}')} "
                     f"| {servers} | {s['errors']} | {_pct(s.get('foreign_cpu'))} |")
    ceil = [s["ceiling_ratio"] for s in policies.values() if s.get("ceiling_ratio") is not None]
    strict = [s["strict_ceiling_ratio"] for s in policies.values() if s.get("strict_ceiling_ratio") is not None]
    if ceil:
        lines.append(f"| ceiling (previous prompt + reply cached; first turns 0) | — | {_span(ceil)} "
                     "| — | 1.00 | — | — | — | — | — | — | — |")
    pre = [s["preamble_ratio"] for s in policies.values() if s.get("preamble_ratio") is not None]
    if pre:
        lines.append(f"| group preamble only (every turn finds its group's tool prompt, no history) | — | "
                     f"{_span(pre)} | — | — | — | — | — | — | — | — | — |")
    if strict:
        lines.append(f"| unbounded cache (ceiling + shared preamble on first turns) | — | "
                     f"{_span(strict)} | — | — | — | — | — | — | — | — | — |")
    return "\n".join(lines)


def render(meta: dict[str, Any], workloads: dict[str, dict[str, Any]],
           results: dict[str, dict[str, dict[str, Any]]], verdict_list: list[dict[str, Any]]) -> str:
    out = [f"Run {meta['date']} on {meta['machine']}; took {meta['took_s'] / 60:.1f} min; {meta['llama_server']}; "
           f"llama-balancer {meta.get('balancer', '?')}.",
           "", "```sh", meta["command"], "```", "",
           f"Settings: seed {meta['seed']}; balancer config in the seed format "
           + (f"with `\"kind\": \"{meta['kind']}\"`" if meta.get("kind") else "without `kind` (product default)")
           + (f"; routing overrides `{meta['routing']}`" if meta.get("routing") else "") + ".", ""]
    if verdict_list:
        out += ["#### Targets (cache-aware)", "", "| run | target | measured | value | verdict |", "|---|---|---|---|---|"]
        for v in verdict_list:
            value = f"{v['value']:.2f}" if isinstance(v["value"], float) else str(v["value"])
            out.append(f"| {v['run']} | {v['target']} | {v['detail']} | {value} | {'**hold**' if v['hold'] else '**miss**'} |")
        out.append("")
    for run, policies in results.items():
        variant, _, ram = run.partition("+")
        wl = workloads[variant]
        servers = ", ".join(f"{s['name']} embd {s['embd']} x {s['layers']} layers" for s in wl["servers"])
        out += [f"#### {run}: {wl['title']}" + (", default `--cache-ram`" if ram else ", `--cache-ram 0`"), "",
                f"{wl['conversations']} conversations at once in {len(wl['groups'])} groups sharing a tool prompt "
                f"({', '.join(map(str, meta.get('preamble_tokens', {}).get(variant, wl['groups'])))} tokens) and each "
                f"its own {wl['agent_tokens'][0]}-{wl['agent_tokens'][1]}-token task; "
                f"{wl['turns'][0]}-{wl['turns'][1]} turns; max_tokens {wl['max_tokens']}; think "
                f"{wl['think_s'][0]:g}-{wl['think_s'][1]:g} s, idle gap {wl['idle_s'][0]:g}-{wl['idle_s'][1]:g} s "
                f"with p {wl['idle_p']:g}; servers: {servers}, 2 slots each.", "", run_table(policies), ""]
    kinds = ("history", "preamble", "less", "first: preamble", "first: less")
    found_rows = [f"| {run} | {LABELS.get(p, p)} | " + " | ".join(str(s["found"].get(k, 0)) for k in kinds) + " |"
                  for run, policies in results.items() for p, s in policies.items() if s.get("found")]
    if found_rows:
        out += ["#### What each turn found cached (llama-server's cache_n against the tokenizer's counts)", "",
                "| run | policy | later turns: own history | group preamble only | less | first turns: preamble "
                "| less |", "|---|---|---|---|---|---|---|", *found_rows, ""]
    rows = [f"| {run} | {p} | " + ", ".join(f"{k} {v}" for k, v in s["reasons"].items()) + " |"
            for run, policies in results.items() for p, s in policies.items() if s.get("reasons")]
    if rows:
        out += ["#### Routing reasons (balancer's access log)", "", "| run | policy | reasons |", "|---|---|---|", *rows, ""]
    return "\n".join(out)


def update_doc(path: Path, section: str) -> None:
    """Replace the text between this bench's markers (the rest of the file is written by hand)."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## Real llama-servers\n\n{BEGIN}\n{END}\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{section.strip()}\n{END}", text, count=1))
