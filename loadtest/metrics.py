"""Triton's Prometheus metrics: scrape, diff two scrapes, and say where the time went per model."""
from __future__ import annotations

import re
import urllib.request
from collections import defaultdict

_LINE = re.compile(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')

COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
            "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
            "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
            "nv_inference_compute_output_duration_us")


def parse(text: str) -> dict[str, dict[str, float]]:
    """{model: {metric: value}} from the metrics endpoint's text (versions summed)."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m or m.group(1) not in COUNTERS:
            continue
        labels = dict(kv.split("=", 1) for kv in re.findall(r'\w+="[^"]*"', m.group(2)))
        model = labels.get("model", '""').strip('"')
        out[model][m.group(1)] += float(m.group(3))
    return {k: dict(v) for k, v in out.items()}


def scrape(url: str | None = None, timeout: float = 5.0) -> dict[str, dict[str, float]]:
    if url is None:
        from client.cli import default_url

        url = default_url("metrics")
    url = url if url.startswith("http") else f"http://{url}"
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout) as r:  # localhost only
        return parse(r.read().decode())


def diff(before: dict, after: dict, model: str) -> dict[str, float]:
    a, b = after.get(model, {}), before.get(model, {})
    return {k: a.get(k, 0.0) - b.get(k, 0.0) for k in COUNTERS}


def breakdown(d: dict[str, float]) -> dict[str, float]:
    """Per request: server total, queue and compute milliseconds; executions and average batch size."""
    n = d["nv_inference_request_success"] + d["nv_inference_request_failure"]
    execs = d["nv_inference_exec_count"]
    per = (lambda k: d[k] / n / 1e3) if n else (lambda k: float("nan"))
    compute = sum(d[k] for k in COUNTERS if k.startswith("nv_inference_compute"))
    return {"requests": n, "failures": d["nv_inference_request_failure"], "executions": execs,
            "avg_batch": d["nv_inference_count"] / execs if execs else float("nan"),
            "server_ms": per("nv_inference_request_duration_us"), "queue_ms": per("nv_inference_queue_duration_us"),
            "compute_ms": compute / n / 1e3 if n else float("nan"),
            # Triton's own split of compute: inputs into the backend, the model's execute, outputs back
            "compute_input_ms": per("nv_inference_compute_input_duration_us"),
            "compute_infer_ms": per("nv_inference_compute_infer_duration_us"),
            "compute_output_ms": per("nv_inference_compute_output_duration_us")}
