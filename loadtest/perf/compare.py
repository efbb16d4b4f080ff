"""Both tools on the same model, concurrency and payload, measured in one run, written to one results file.

A results file (`PREFIX.json` + `PREFIX.md`) holds runs keyed by (model, protocol, payload, batch): a later run
with the same key replaces its run, others are kept, so several invocations (both protocols, several payloads) fill
one file. Each row puts perf_analyzer's numbers beside the closed-loop generator's and says, where they disagree by
more than `TOLERANCE`, the reasons that apply to that payload and measurement.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path

TOLERANCE = 0.15  # relative difference under which the tools are said to agree
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def host() -> dict:
    """The CPU (model name, the vector flags that change the CPU rows' speed), core count, OS, date."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": name, "cpus": os.cpu_count(), "flags": [f for f in FLAGS if f in flags],
            "os": f"{platform.system()} {platform.release()}", "glibc": "-".join(platform.libc_ver()),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _rel(a, b) -> float | None:
    if a is None or b is None or max(abs(a), abs(b)) == 0:
        return None
    return (a - b) / max(abs(a), abs(b))


def reasons(pa: dict, ours: dict, payload: str, protocol: str, interval_ms: int) -> list[str]:
    """Why perf_analyzer (`pa`, a parse_csv record) and the closed loop (`ours`, closed_loop.run's summary) differ
    on this row; empty when throughput and p50 agree within TOLERANCE and p99 within twice that."""
    thr = _rel(pa.get("infer_per_s"), ours.get("img_per_s"))
    p50 = _rel(pa.get("p50_ms"), ours.get("p50_ms"))
    p99 = _rel(pa.get("p99_ms"), ours.get("p99_ms"))
    out = []
    if thr is not None and abs(thr) > TOLERANCE or p50 is not None and abs(p50) > TOLERANCE:
        faster = "perf_analyzer" if (thr or 0) > 0 else "the closed loop"
        out.append(f"{faster} is faster ({abs(thr or 0) * 100:.0f} % in throughput, p50 "
                   f"{pa.get('p50_ms') or float('nan'):.2f} vs {ours.get('p50_ms') or float('nan'):.2f} ms)")
        if payload == "raw-shm" and (thr or 0) > 0:
            out.append("raw-shm: perf_analyzer writes every input entry into its own shared-memory region once, "
                       "before measuring, and each request only names a region; the closed loop copies the frame "
                       "into its region for every request (a camera's cost), and reads labels back the same way")
        if (thr or 0) > 0:
            out.append("client cost: perf_analyzer's C++ client keeps requests in flight from native threads; the "
                       f"closed loop's {protocol} client is Python (tritonclient, one thread per request in flight, "
                       "one process here): serialising and the GIL add to each request where the model is fast")
        elif payload == "raw-shm":
            out.append("spread: with nothing copied per request by perf_analyzer, nothing in the method makes "
                       "the closed loop faster; on a shared host the same point differs this much run to run")
        elif (ours.get("p50_ms") or 1e9) < 50:
            out.append("client CPU: where the load generator shares a few CPUs with the server, each request's "
                       "client-side CPU is taken from the server; perf_analyzer's client can cost more CPU per "
                       "request than the Python client (see the notes)")
        else:
            out.append("perf_analyzer counts only its stable windows; a slow model gives few requests per window, "
                       "and its windows include requests that the closed loop's warm-up seconds leave out")
    if p99 is not None and abs(p99) > 2 * TOLERANCE:
        out.append(f"p99 ({pa.get('p99_ms') or float('nan'):.2f} vs {ours.get('p99_ms') or float('nan'):.2f} ms): "
                   f"perf_analyzer's percentiles cover its last stable windows ({interval_ms} ms each, the requests "
                   "completed in them); the closed loop's cover every request of its measured seconds, after its "
                   "warm-up. With few requests the p99 of either is its slowest request")
    if ours.get("failures"):
        out.append(f"the closed loop had {ours['failures']} failures ({'; '.join(ours.get('errors', [])[:2])})")
    return out


def row(pa: dict | None, ours: dict | None, payload: str, protocol: str, interval_ms: int) -> dict:
    """One concurrency's side-by-side record."""
    pa, ours = pa or {}, ours or {}
    keep = ("img_per_s", "p50_ms", "p90_ms", "p99_ms", "requests", "failures")
    return {"concurrency": pa.get("concurrency", ours.get("concurrency")),
            "perf_analyzer": {k: pa.get(k) for k in ("infer_per_s", "p50_ms", "p90_ms", "p99_ms", "avg_ms",
                                                     "server_ms", "queue_ms", "compute_infer_ms", "interval_ms")},
            "closed_loop": {**{k: ours.get(k) for k in keep},
                            "server_ms": (ours.get("server") or {}).get("server_ms")},
            "why": reasons(pa, ours, payload, protocol, pa.get("interval_ms", interval_ms)) if pa and ours else
            ["measured by one tool only"]}


def key(run: dict) -> tuple:
    return run["model"], run["protocol"], run["payload"], run.get("batch", 1)


def merge(path: Path, run: dict) -> dict:
    """The results file at `path` (.json) with `run` added, replacing a run of the same key."""
    doc = {"title": "perf_analyzer beside the closed-loop generator", "runs": []}
    if path.is_file():
        doc = json.loads(path.read_text())
    doc["runs"] = [r for r in doc.get("runs", []) if key(r) != key(run)] + [run]
    doc["runs"].sort(key=key)
    return doc


def _f(x, fmt="{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def markdown(doc: dict) -> str:
    """The results file's markdown: one table per run, both tools side by side, and the reasons per row."""
    lines = [f"# {doc['title']}", "",
             "perf_analyzer (Triton's C++ load generator, from the `perf-analyzer` wheel) and `loadtest.closed_loop` "
             "(the project's) measured the same served model, concurrency and payload one after the other in one "
             "run, with the same frames (the input policy's). perf_analyzer: client-side latency over its stable "
             "time windows; closed loop: every request of its measured seconds after a warm-up. Throughput in "
             "images/s (batch 1: requests/s).", ""]
    for r in doc["runs"]:
        h = r["host"]
        lines += [f"## {r['model']} — {r['protocol']}, {r['payload']}, batch {r.get('batch', 1)}", "",
                  f"{h['date']}; {h['cpu']}, {h['cpus']} CPUs ({', '.join(h['flags']) or 'no AVX2'}), {h['os']}, "
                  f"{h['glibc']}; server Triton {r.get('server_version', '?')}; {r['perf_analyzer_version']}"
                  f"{' (glibc shim)' if r.get('shim') else ''}; perf_analyzer windows {r['interval_ms']} ms, "
                  f"stable within {r['stability']} %; closed loop {r['duration_s']:g} s after "
                  f"{r['warmup_s']:g} s warm-up, {r['processes']} process(es); input "
                  f"{'x'.join(str(x) for x in r['input_shape'])} ({r['frames']} frames"
                  f"{', ' + r['images'] if r.get('images') else ', synthetic'}).", "",
                  "| concurrency | perf_analyzer img/s | closed loop img/s | p50 ms (PA / ours) | p99 ms (PA / ours) "
                  "| server ms (PA / ours) | why they differ |",
                  "|---:|---:|---:|---:|---:|---:|---|"]
        for x in r["rows"]:
            pa, cl = x["perf_analyzer"], x["closed_loop"]
            lines.append(f"| {x['concurrency']} | {_f(pa['infer_per_s'])} | {_f(cl['img_per_s'])} | "
                         f"{_f(pa['p50_ms'], '{:.2f}')} / {_f(cl['p50_ms'], '{:.2f}')} | "
                         f"{_f(pa['p99_ms'], '{:.2f}')} / {_f(cl['p99_ms'], '{:.2f}')} | "
                         f"{_f(pa['server_ms'], '{:.2f}')} / {_f(cl['server_ms'], '{:.2f}')} | "
                         f"{'<br>'.join(x['why']) or 'agree (within 15 %)'} |")
        if r.get("errors"):
            lines += ["", *(f"- {e}" for e in r["errors"])]
        if r.get("notes"):
            lines += ["", *(f"Note: {n}" for n in r["notes"])]
        lines.append("")
    return "\n".join(lines)


def paths(prefix: Path) -> tuple[Path, Path]:
    """PREFIX.json and PREFIX.md (a given .json / .md ending is dropped first)."""
    base = str(prefix)
    for ext in (".json", ".md"):
        base = base.removesuffix(ext)
    return Path(base + ".json"), Path(base + ".md")


def refresh(prefix: Path) -> tuple[Path, Path]:
    """Recompute every row's reasons from the stored numbers (after the rules change) and rewrite PREFIX.md."""
    from segformer.weights import atomic_write_bytes

    js, md = paths(prefix)
    doc = json.loads(js.read_text())
    for r in doc["runs"]:
        for x in r["rows"]:
            pa, cl = x["perf_analyzer"], x["closed_loop"]
            if pa.get("infer_per_s") is not None and cl.get("img_per_s") is not None:
                x["why"] = reasons(pa, cl, r["payload"], r["protocol"], pa.get("interval_ms") or r["interval_ms"])
    atomic_write_bytes(js, (json.dumps(doc, indent=1) + "\n").encode())
    atomic_write_bytes(md, (markdown(doc) + "\n").encode())
    return js, md


def write(prefix: Path, run: dict) -> tuple[Path, Path]:
    """Merge `run` into PREFIX.json and rewrite PREFIX.md from it."""
    from segformer.weights import atomic_write_bytes

    js, md = paths(prefix)
    doc = merge(js, run)
    js.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(js, (json.dumps(doc, indent=1) + "\n").encode())
    atomic_write_bytes(md, (markdown(doc) + "\n").encode())
    return js, md
