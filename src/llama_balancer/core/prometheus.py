"""A minimal reader of the Prometheus text exposition format, for backends' /metrics."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

# name, optional {labels}, value, optional timestamp (ignored).
_LINE = re.compile(
    r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\s*\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\}\s*|\s+)(\S+)(?:\s+\S+)?\s*$'
)
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"n": "\n", "\\": "\\", '"': '"'}


@dataclass(frozen=True)
class Sample:
    """One line of Prometheus text: ``name{labels} value``."""

    name: str
    labels: Mapping[str, str]
    value: float


def prometheus_samples(text: str | bytes) -> list[Sample]:
    """Every well-formed sample line; comments, blank and broken lines are skipped."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found = _LINE.match(line)
        if found is None:
            continue
        try:
            value = float(found.group(3))  # accepts NaN, +Inf, -Inf, 1e3
        except ValueError:
            continue
        samples.append(Sample(found.group(1), _labels(found.group(2) or ""), value))
    return samples


def parse_prometheus(text: str | bytes) -> dict[str, float]:
    """Samples summed per metric name, labels dropped.

    Summing is what a balancer wants from a backend's gauges: vLLM labels each gauge with
    ``model_name`` (and engine), and the load of the server is the total. NaN means "no
    value" and is left out, so a name whose samples are all NaN is absent. Do not read
    histogram ``_bucket`` series from this view (their sum over ``le`` means nothing).
    """
    out: dict[str, float] = {}
    for sample in prometheus_samples(text):
        if not math.isnan(sample.value):
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def _labels(raw: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for found in _LABEL.finditer(raw):
        value = re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(0)), found.group(2))
        labels[found.group(1)] = value
    return labels
