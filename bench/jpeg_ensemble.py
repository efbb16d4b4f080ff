"""JPEG in through a row's `_jpeg` ensemble vs raw frames, on the pip Triton (CPU): bytes on the wire and the
end-to-end latency each way, interleaved, medians.

    python -m bench.jpeg_ensemble --data ../shared/datasets/camvid [--images 10] [--repeats 3]
                                  [--out docs/results/jpeg_ensemble_cpu.md]

Rows: the null model at 1024x1024 (no inference: what the payload and the decode step cost by themselves) and the
shipped B0 with ONNX Runtime at 384x512 (a real row), each with its ensemble, in a temporary repository. Raw: the
client decodes the file, places it (input policy `fit`) and sends the uint8 frame. JPEG: the client sends the file
as it is; the decode step decodes and places it on the server. Both restore the labels to the image's size, and
the labels are checked equal. Client and server share this machine's cores: compare within one run.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS = (("segformer_null", "null", (1024, 1024)), ("segformer_b0", "ort", (384, 512)))


def _repository(tmp: Path) -> Path:
    from build.repository import write_repository
    from build.variants import PYTHON_NULL, PYTHON_ORT, ServingVariant, jpeg_rows

    kinds = {"null": PYTHON_NULL, "ort": PYTHON_ORT}
    rows = [ServingVariant(f"bench_{k}", "segformer-b0-camvid", kinds[k], size=size, max_batch=2)
            for _, k, size in ROWS]
    rows += [j for r in rows for j in jpeg_rows(r)]
    res = write_repository(rows, tmp / "repo", cache_dir=tmp / "cache")
    bad = {k: v for k, v in res.items() if v != "built"}
    if bad:
        raise SystemExit(f"build failed: {bad}")
    return tmp / "repo"


def measure(url: str, row: str, files: list[Path], repeats: int) -> dict:
    from client.policy import InputPolicy
    from client.preprocess import load_image
    from client.runners import TritonRunner
    from client.segment import encoded_labels

    raw, enc = TritonRunner(row, url), TritonRunner(row + "_jpeg", url)
    raw.activate()
    enc.activate()
    policy = InputPolicy.for_model(raw.info)
    t_raw, t_jpeg, b_raw, b_jpeg, equal = [], [], [], [], 0
    for f in files[:1]:  # warm both paths
        encoded_labels(enc, f.read_bytes(), load_image(f).shape[:2])
        policy.predict(load_image(f), raw)
    for _ in range(repeats):
        for f in files:
            t0 = time.perf_counter()
            image = load_image(f)
            x, p = policy.prepare(image)
            a = policy.restore(raw.infer(x[None])[0], p, image.shape[:2])
            t1 = time.perf_counter()
            data = f.read_bytes()
            b = encoded_labels(enc, data, image.shape[:2])
            t2 = time.perf_counter()
            t_raw.append(t1 - t0)
            t_jpeg.append(t2 - t1)
            b_raw.append(x.nbytes)
            b_jpeg.append(len(data))
            equal += int(np.array_equal(a, b))
    step = TritonRunner(row + "_decode", url)
    stats = step.statistics()
    step.deactivate()
    decode_ms = None
    for m in stats.get("model_stats", []):
        s = m.get("inference_stats", {}).get("compute_infer", {})
        if int(s.get("count", 0)):
            decode_ms = int(s["ns"]) / int(s["count"]) / 1e6
    raw.deactivate()
    enc.deactivate()
    return {"row": row, "size": list(raw.info.size), "n": len(t_raw), "labels_equal": equal,
            "raw_ms": 1e3 * statistics.median(t_raw), "jpeg_ms": 1e3 * statistics.median(t_jpeg),
            "raw_kib": statistics.median(b_raw) / 1024, "jpeg_kib": statistics.median(b_jpeg) / 1024,
            "decode_step_ms": decode_ms}


def report(results: list[dict], files: list[Path]) -> str:
    lines = ["# JPEG in through the `_jpeg` ensembles vs raw frames (pip Triton, CPU)", "",
             f"`python -m bench.jpeg_ensemble`: {len(files)} CamVid test frames (480x360 JPEG, quality 90), each "
             "sent both ways per pass, interleaved; medians over all requests. Same machine for client and server "
             f"({os.cpu_count()} cores, shared; {platform.processor() or platform.machine()}). Raw = client decode + "
             "placement + uint8 frame over HTTP; JPEG = the file as it is, decoded and placed by `<row>_decode` "
             "(Pillow, the client's placement code). Latency is end to end on the client, labels restored to "
             "480x360 both ways.", "",
             "| row (input) | raw KiB/request | JPEG KiB/request | bytes saved | raw ms | JPEG ms | extra ms | "
             "decode step ms (server) | labels equal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        saved = 100 * (1 - r["jpeg_kib"] / r["raw_kib"])
        dec = f"{r['decode_step_ms']:.1f}" if r["decode_step_ms"] is not None else "-"
        lines.append(f"| {r['row']} ({r['size'][0]}x{r['size'][1]}) | {r['raw_kib']:.0f} | {r['jpeg_kib']:.0f} | "
                     f"{saved:.1f} % | {r['raw_ms']:.1f} | {r['jpeg_ms']:.1f} | {r['jpeg_ms'] - r['raw_ms']:+.1f} | "
                     f"{dec} | {r['labels_equal']}/{r['n']} |")
    lines += ["", "The extra latency is the ensemble's second step and the server-side decode, minus the client's "
              "own decode and the larger upload, all on one machine over loopback; over a real network the raw "
              "frame's extra bytes cost more than here."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import server.serve as serve

    ap = argparse.ArgumentParser(prog="python -m bench.jpeg_ensemble", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="CamVid folder (test/images)")
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--port", type=int, default=18540, help="HTTP port (gRPC +1, metrics +2)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/jpeg_ensemble_cpu.md"))
    a = ap.parse_args(argv)
    files = sorted((a.data / "test" / "images").glob("*.jpg"))[:a.images]
    serve.PLATFORM_BACKENDS.setdefault("ensemble", "python")  # ensembles are Triton's own (see issue 33's report)
    with tempfile.TemporaryDirectory() as tmp:
        repo = _repository(Path(tmp))
        proc = serve.start(repo, a.port, a.port + 1, a.port + 2, state=Path(tmp) / "state")
        try:
            results = [measure(f"127.0.0.1:{a.port}", f"bench_{k}", files, a.repeats) for _, k, _ in ROWS]
        finally:
            serve.stop_pid(proc.pid)
    text = report(results, files)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
