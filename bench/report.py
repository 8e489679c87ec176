"""Reporting for bench/harness.py: medians over rounds, the issue's verdicts, the markdown
tables, machine facts, and the update of docs/performance.md between its markers."""
from __future__ import annotations

import platform
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

from sglang_launch import sglang_router_version

ROOT = Path(__file__).resolve().parent.parent
# direct (the limit), the two proxies the balancer is judged against (nginx; sglang-router, the
# Rust LLM router), and the balancer.
TARGETS = ("direct", "nginx", "sglang-router", "balancer")
# Reference points (bench/reference/): what any design on aiohttp.web, and the least a
# Python proxy on asyncio protocols, can do on the same core. Measured, never judged.
REFERENCES = ("aiohttp-only", "raw-proxy")
REFERENCE_SCENARIOS = {"aiohttp-only": ("S1",), "raw-proxy": ("S1", "S2", "S3", "S4")}
# The ratio rows under each scenario's table: (numerator, denominator).
RATIOS = (("balancer", "nginx"), ("balancer", "sglang-router"), ("sglang-router", "nginx"),
          ("aiohttp-only", "nginx"), ("raw-proxy", "nginx"))
# The targets, in the same run: S1 req/s against sglang-router, the rest against nginx.
S1_RPS_VS_SGLANG, S2_TTFT50_RATIO, S2_TTFT99_RATIO, S2_SPS_RATIO = 1.0, 1.2, 1.5, 0.9
S3_RSS_MIB, S3_CPU_RATIO, S4_RSS_MIB = 100.0, 3.0, 400.0


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]], scenarios: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = ("rps", "lat_p50_ms", "lat_p99_ms", "ttft_p50_ms", "ttft_p99_ms", "total_p50_ms", "streams_per_s",
            "requests", "streams", "proxy_cpu_s", "proxy_cpu_us_per_req", "proxy_peak_rss_mib", "backend_cpu_s",
            "elapsed_s")
    for s in scenarios:
        out[s] = {}
        for t in TARGETS + REFERENCES:
            rs = [r for r in runs if r["scenario"] == s and r["target"] == t]
            if not rs:
                continue
            row = {k: median_of(rs, k) for k in keys}
            row["errors"] = sum(r["errors"] for r in rs)
            row["rounds"] = len(rs)
            row["peak_rss_max_mib"] = max((r.get("proxy_peak_rss_mib") or 0) for r in rs) or None
            out[s][t] = row
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def verdicts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: what is required, what was measured, held or missed."""
    rows: list[dict[str, Any]] = []

    def add(name: str, need: str, value: float | None, ok: bool | None, fmt: str = "{:.2f}") -> None:
        rows.append({"target": name, "need": need, "measured": None if value is None else fmt.format(value),
                     "holds": ok})

    def get(s: str, t: str, k: str) -> float | None:
        return summary.get(s, {}).get(t, {}).get(k)

    if "S1" in summary:
        r = _ratio(get("S1", "balancer", "rps"), get("S1", "sglang-router", "rps"))
        add("S1 req/s vs sglang-router", f">= {S1_RPS_VS_SGLANG}x", r,
            None if r is None else r >= S1_RPS_VS_SGLANG, "{:.2f}x")
    if "S2" in summary:
        for key, lim, label in (("ttft_p50_ms", S2_TTFT50_RATIO, "S2 TTFT p50 vs nginx"),
                                ("ttft_p99_ms", S2_TTFT99_RATIO, "S2 TTFT p99 vs nginx")):
            r = _ratio(get("S2", "balancer", key), get("S2", "nginx", key))
            add(label, f"<= {lim}x", r, None if r is None else r <= lim, "{:.2f}x")
        r = _ratio(get("S2", "balancer", "streams_per_s"), get("S2", "nginx", "streams_per_s"))
        add("S2 streams/s vs nginx", f">= {S2_SPS_RATIO}x", r, None if r is None else r >= S2_SPS_RATIO, "{:.2f}x")
    for s, rss_lim in (("S3", S3_RSS_MIB), ("S4", S4_RSS_MIB)):
        if s not in summary:
            continue
        e = get(s, "balancer", "errors")
        add(f"{s} errors", "0", e, None if e is None else e == 0, "{:.0f}")
        m = get(s, "balancer", "peak_rss_max_mib")
        add(f"{s} peak RSS", f"<= {rss_lim:.0f} MiB", m, None if m is None else m <= rss_lim, "{:.1f} MiB")
        if s == "S3":
            r = _ratio(get(s, "balancer", "proxy_cpu_s"), get(s, "nginx", "proxy_cpu_s"))
            add("S3 CPU vs nginx", f"<= {S3_CPU_RATIO}x", r, None if r is None else r <= S3_CPU_RATIO, "{:.2f}x")
    return rows


def _f(v: Any, spec: str = "{:.1f}") -> str:
    return "-" if v is None else spec.format(v)


def markdown(meta: dict[str, Any], summary: dict[str, Any], checks: list[dict[str, Any]]) -> str:
    lines = [f"Run of {meta['date']} on {meta['machine']['summary']}; {meta['rounds']} round(s), "
             "medians over rounds (errors: summed).", ""]
    cols = {
        "S1": [("req/s", "rps", "{:.0f}"), ("lat p50 ms", "lat_p50_ms", "{:.2f}"), ("lat p99 ms", "lat_p99_ms", "{:.2f}")],
        "S2": [("TTFT p50 ms", "ttft_p50_ms", "{:.2f}"), ("TTFT p99 ms", "ttft_p99_ms", "{:.2f}"),
               ("total p50 ms", "total_p50_ms", "{:.1f}"), ("streams/s", "streams_per_s", "{:.1f}")],
        "S3": [("streams", "streams", "{:.0f}"), ("TTFT p50 ms", "ttft_p50_ms", "{:.1f}"),
               ("TTFT p99 ms", "ttft_p99_ms", "{:.1f}"), ("total p50 s", "total_p50_ms", "{:.0f}")],
    }
    cols["S4"] = cols["S3"]
    common = [("errors", "errors", "{:.0f}"), ("proxy CPU s", "proxy_cpu_s", "{:.2f}"),
              ("CPU µs/req", "proxy_cpu_us_per_req", "{:.1f}"),
              ("proxy peak RSS MiB", "peak_rss_max_mib", "{:.1f}"), ("backend CPU s", "backend_cpu_s", "{:.2f}")]
    for s, rows in summary.items():
        p = meta["scenarios"][s]
        lines.append(f"**{s}** — {describe(s, p)}")
        lines.append("")
        spec = cols[s] + common
        lines.append("| target | " + " | ".join(c[0] for c in spec) + " |")
        lines.append("|---" * (len(spec) + 1) + "|")
        for t, row in rows.items():
            cells = []
            for _, key, fmt in spec:
                v = row.get(key)
                if key == "total_p50_ms" and s in ("S3", "S4") and v is not None:
                    v = v / 1000
                cells.append(_f(v, fmt))
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        ratio_keys = [c for c in cols[s] if c[1] not in ("streams",)] + [
            ("proxy CPU s", "proxy_cpu_s", ""), ("CPU µs/req", "proxy_cpu_us_per_req", "")]
        for name, over in RATIOS:
            row, base = rows.get(name), rows.get(over)
            if row and base:
                parts = [f"{label} {_f(_ratio(row.get(k), base.get(k)), '{:.2f}')}x" for label, k, _ in ratio_keys]
                lines.append(f"| {name} / {over} | " + "; ".join(parts) + " |" + " |" * (len(spec) - 1))
        lines.append("")
    lines.append("| target | need | measured | holds |")
    lines.append("|---|---|---|---|")
    for c in checks:
        mark = "-" if c["holds"] is None else ("yes" if c["holds"] else "**MISS**")
        lines.append(f"| {c['target']} | {c['need']} | {c['measured'] or '-'} | {mark} |")
    if meta.get("notes"):
        lines.append("")
        lines.extend(f"Note: {n}" for n in meta["notes"])
    return "\n".join(lines) + "\n"


def describe(s: str, p: dict[str, Any]) -> str:
    if p["kind"] == "wrk":
        return f"non-streaming chat, wrk -t1 -c{p['conns']} -d{p['duration']:g}s"
    if p["kind"] == "loop":
        return (f"streaming chat, {p['concurrency']} concurrent for {p['duration']:g} s, "
                f"{p['chunks']} chunks {p['delay_ms']:g} ms apart")
    return (f"{p['concurrency']} concurrent streams ({p['procs']} generator processes, started over "
            f"{p['ramp']:g} s), {p['chunks']} chunks {p['delay_ms']:g} ms apart")


def machine_facts() -> dict[str, Any]:
    def sh(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip()
        except (OSError, subprocess.SubprocessError):
            return "?"
    import aiohttp
    try:
        import uvloop
        uv = uvloop.__version__
    except ImportError:  # pragma: no cover
        uv = None
    lscpu = sh(["lscpu"]).splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu if ln.startswith("Model name")), "?")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    facts = {
        "nproc": sh(["nproc"]), "cpu_model": model, "lscpu_head": lscpu[:15],
        "kernel": platform.release(), "python": platform.python_version(), "aiohttp": aiohttp.__version__,
        "uvloop": uv, "nginx": sh([nginx, "-v"]).replace("nginx version: ", ""),
        "wrk": sh(["wrk", "-v"]).splitlines()[0] if shutil.which("wrk") else None,
        "sglang_router": sglang_router_version(),
        "commit": sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "dirty": bool(sh(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"]).strip()),
    }
    facts["summary"] = (f"{facts['nproc']} x {model}, Linux {facts['kernel']}, Python {facts['python']}, "
                        f"aiohttp {facts['aiohttp']}, uvloop {uv}, nginx {facts['nginx']}, "
                        f"sglang-router {facts['sglang_router'] or 'not installed'}, commit {facts['commit']}"
                        + (" (+ uncommitted src changes)" if facts["dirty"] else ""))
    return facts


BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
HBEGIN, HEND = "<!-- bench:history:begin -->", "<!-- bench:history:end -->"


def update_doc(doc: Path, meta: dict[str, Any], table: str, checks: list[dict[str, Any]]) -> None:
    """Replace the results block, add one history line (newest first, at most 10)."""
    if doc.exists():
        text = doc.read_text()
    else:
        text = f"# Performance\n\n## Latest run\n\n{BEGIN}\n{END}\n\n## History\n\n{HBEGIN}\n{HEND}\n"
    facts = meta["machine"]
    block = "\n".join([
        BEGIN,
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {facts['summary']}  ",
        f"`lscpu | head`: {'; '.join(' '.join(ln.split()) for ln in facts['lscpu_head'][:10])}  ",
        f"Pinning: proxy on core 0 (`taskset -c 0`), backend and load generators on core 1; "
        f"RLIMIT_NOFILE {meta['nofile']}.",
        "",
        table.rstrip(),
        END,
    ])
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text += "\n" + block + "\n"
    held = [c for c in checks if c["holds"] is not None]
    line = (f"- {meta['date']} ({facts['commit']}{'+' if facts['dirty'] else ''}): "
            + "; ".join(f"{c['target']} {c['measured']}{'' if c['holds'] else ' MISS'}" for c in held))
    if HBEGIN in text and HEND in text:
        head, rest = text.split(HBEGIN, 1)
        old, tail = rest.split(HEND, 1)
        lines = [ln for ln in old.strip().splitlines() if ln.strip()]
        text = head + HBEGIN + "\n" + "\n".join(([line] + lines)[:10]) + "\n" + HEND + tail
    doc.write_text(text)


# ----------------------------------------------------------------------------- main
