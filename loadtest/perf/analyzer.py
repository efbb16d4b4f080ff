"""perf_analyzer's side: its input data from the input policy's frames, its command line, its CSV.

Input data (`--input-data FILE`) is perf_analyzer's JSON: one entry per request step, each input as base64 bytes
with its shape (`{"data": [{"images": {"b64": ..., "shape": [H, W, 3]}}, ...]}`); the `jpeg` payload fills the
row's `encoded` input with each frame's JPEG file instead. perf_analyzer walks the entries request by request, so
it sends the same frames the closed-loop generator sends.

The CSV (`-f FILE`) has one row per concurrency: throughput, the client/server latency split (microseconds) and
the client-side latency percentiles; `parse_csv` turns it into records in milliseconds, with the average latency
(perf_analyzer's "Avg latency" line) as the sum of the split, as perf_analyzer computes it.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.perf.binary import NOISE
from segformer.errors import ProjectError

PAYLOADS = ("raw", "raw-shm", "jpeg")
# CSV header -> record key (microseconds in the file, milliseconds in the record)
COLUMNS = {"Client Send": "client_send_ms", "Network+Server Send/Recv": "network_ms", "Server Queue": "queue_ms",
           "Server Compute Input": "compute_input_ms", "Server Compute Infer": "compute_infer_ms",
           "Server Compute Output": "compute_output_ms", "Client Recv": "client_recv_ms",
           "p50 latency": "p50_ms", "p90 latency": "p90_ms", "p95 latency": "p95_ms", "p99 latency": "p99_ms"}
SPLIT = ("client_send_ms", "network_ms", "queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms",
         "client_recv_ms")


class PerfAnalyzerError(ProjectError):
    """perf_analyzer refused the run or failed it: its own first error line."""


def concurrency_range(spec: str) -> list[int]:
    """`1:4:1` (start:end[:step], perf_analyzer's form) or `4` -> [1, 2, 3, 4] / [4]."""
    try:
        parts = [int(x) for x in str(spec).split(":")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or min(parts) < 1 or (len(parts) > 1 and parts[1] < parts[0]):
        raise ValueError(f"--concurrency {spec!r}: use START:END[:STEP] with 1 <= START <= END, e.g. 1:4:1")
    start, end, step = (parts + [parts[0], 1][len(parts) - 1:])[:3]
    return list(range(start, end + 1, step))


def jpeg_bytes(frame: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def input_data(frames: list[np.ndarray], payload: str = "raw", batch: int = 1) -> dict:
    """perf_analyzer's --input-data JSON for `frames` (uint8 [H, W, 3] each): `images` for the raw payloads, the
    JPEG files as `encoded` for `jpeg`. Shapes exclude the batch dimension; with `-b N` perf_analyzer makes each
    request's batch from these entries (batch > 1 measured on the GPU host only)."""
    if payload not in PAYLOADS:
        raise ValueError(f"unknown payload {payload!r}; choose from {', '.join(PAYLOADS)}")
    if not frames:
        raise ValueError("no frames to send")
    if payload == "jpeg" and batch != 1:
        raise ValueError("--payload jpeg sends one image per request: use --batch 1")
    data = []
    for f in frames:
        f = np.ascontiguousarray(f, np.uint8)
        if payload == "jpeg":
            blob = jpeg_bytes(f)
            data.append({"encoded": {"b64": base64.b64encode(blob).decode(), "shape": [len(blob)]}})
        else:
            data.append({"images": {"b64": base64.b64encode(f.tobytes()).decode(), "shape": list(f.shape)}})
    return {"data": data}


def write_input_data(path: Path, frames: list[np.ndarray], payload: str = "raw", batch: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(input_data(frames, payload, batch)))
    return path


@dataclass(frozen=True)
class Measurement:
    """How long perf_analyzer measures each concurrency: time windows of `interval_ms`, stable when the last three
    windows agree within `stability` percent, at most `max_trials` windows, after `warmup` requests (which
    perf_analyzer takes for a single concurrency only: `compare` runs it once per concurrency)."""

    interval_ms: int = 2000
    stability: int = 25
    max_trials: int = 6
    warmup: int = 0


def command(binary: Path, model: str, url: str, protocol: str, concurrency: str, payload: str, data: Path,
            csv_path: Path, m: Measurement = Measurement(), batch: int = 1, output_bytes: int = 0) -> list[str]:
    """perf_analyzer's argv for one sweep over `concurrency` (START:END:STEP)."""
    lo = concurrency_range(concurrency)
    argv = [str(binary), "-m", model, "-u", url, "-i", protocol, "-b", str(batch),
            "--concurrency-range", f"{lo[0]}:{lo[-1]}:{lo[1] - lo[0] if len(lo) > 1 else 1}",
            "--input-data", str(data), "--measurement-mode", "time_windows", "-p", str(m.interval_ms),
            "-s", str(m.stability), "-r", str(m.max_trials),
            "-f", str(csv_path)]
    if m.warmup and len(lo) == 1:
        argv += ["--warmup-request-count", str(m.warmup)]
    if payload == "raw-shm":  # inputs and outputs in system shared memory regions perf_analyzer registers
        argv += ["--shared-memory", "system", "--output-shared-memory-size", str(max(1, output_bytes))]
    return argv


def _ms(value: str) -> float | None:
    try:
        return float(value) / 1e3
    except (TypeError, ValueError):
        return None


def parse_csv(text: str) -> list[dict]:
    """perf_analyzer's `-f` CSV as records: concurrency, infer_per_s, the latency split and percentiles (ms),
    avg_ms (the split's sum) and server_ms (queue + compute). Unknown columns are kept under their own names."""
    rows = []
    for raw in csv.DictReader(io.StringIO(text.strip())):
        if not raw.get("Concurrency"):
            continue
        rec = {"concurrency": int(float(raw["Concurrency"])), "infer_per_s": float(raw["Inferences/Second"])}
        for col, value in raw.items():
            if col in ("Concurrency", "Inferences/Second") or col is None:
                continue
            if col in COLUMNS:
                rec[COLUMNS[col]] = _ms(value)
            else:
                rec[col] = value
        split = [rec.get(k) for k in SPLIT]
        rec["avg_ms"] = sum(split) if all(v is not None for v in split) else None
        server = [rec.get(k) for k in SPLIT[2:6]]
        rec["server_ms"] = sum(server) if all(v is not None for v in server) else None
        rows.append(rec)
    if not rows:
        raise PerfAnalyzerError("perf_analyzer's CSV has no measurement rows")
    return rows


def error_line(output: str) -> str:
    """The line of perf_analyzer's output that says why it stopped (it prints its errors on stdout)."""
    lines = [l.strip() for l in output.splitlines() if l.strip() and NOISE not in l]
    for l in lines:
        low = l.lower()
        if low.startswith("error") or "failed" in low or "unable" in low or "not found" in low:
            return l
    return lines[-1] if lines else "no output"


def run(argv: list[str], csv_path: Path, timeout: float = 600) -> tuple[list[dict], str]:
    """Run perf_analyzer; (records, its console output without loader noise). PerfAnalyzerError on failure."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PerfAnalyzerError(f"perf_analyzer ran past {timeout:.0f} s: shorten --interval-ms or the "
                                "concurrency range") from None
    out = "\n".join(l for l in (r.stdout + "\n" + r.stderr).splitlines() if NOISE not in l)
    if r.returncode or not csv_path.is_file():
        raise PerfAnalyzerError(f"perf_analyzer failed (exit {r.returncode}): {error_line(out)}")
    return parse_csv(csv_path.read_text()), out
