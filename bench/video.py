"""Video throughput: a clip made from CamVid test frames through `client.segment`'s video path, per in-flight count.

    python -m bench.video --model segformer_b1_ov --in-flight 1 2 4 [--seconds 10 --fps 10 --size 960x720] \
        [--url localhost:8001] --out docs/results/video_cpu_b1_ov

The clip: consecutive CamVid test frames (sequence 0001TP), scaled to --size, H.264 at --fps for --seconds. Each
in-flight count segments the whole clip once against the running server (gRPC); the table gives end-to-end fps,
the server's compute rate and p50/p99 latency per frame, and marks the count with the highest fps. The CPU's model
and flags (or the GPU's name) are recorded with the numbers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench import BenchError
from client import cli


def make_clip(frames_dir: Path, path: Path, seconds: float, fps: float, size: tuple[int, int]) -> Path:
    import av

    files = sorted(frames_dir.glob("0001TP_*.jpg")) or sorted(frames_dir.glob("*.jpg"))
    n = int(round(seconds * fps))
    if not files:
        raise BenchError(f"{frames_dir}: no .jpg frames (--frames: a folder of CamVid test frames)")
    w, h = size
    with av.open(str(path), "w") as box:
        s = box.add_stream("libx264", rate=int(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.asarray(Image.open(files[i % len(files)]).convert("RGB").resize((w, h), Image.BILINEAR))
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                box.mux(p)
        for p in s.encode():
            box.mux(p)
    return path


def machine() -> str:
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if gpu:
            return gpu
    except (OSError, subprocess.TimeoutExpired):
        pass
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "cpu")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    keep = [f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f]
    return f"{model}, {sum(ln.startswith('processor') for ln in text.splitlines())} cores, {' '.join(keep)}"


def main(argv=None) -> int:
    from segformer.config import parse_size

    ap = argparse.ArgumentParser(prog="python -m bench.video", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_option(ap, default="segformer_b1_ov")
    cli.add_server_options(ap, protocols=("grpc",), timeout=300.0, several=False)
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4], help="frames in flight to try")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    ap.add_argument("--fps", type=float, default=10.0, help="clip frame rate (default 10)")
    ap.add_argument("--size", type=parse_size, default=(720, 960), help="HxW of the clip (default 720x960)")
    ap.add_argument("--frames", type=Path, default=Path("../shared/datasets/camvid/test/images"),
                    help="CamVid test frames the clip is made of")
    ap.add_argument("--out", type=Path, default=Path("results/video"), help="writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    from client.runners import RunnerError

    return cli.run(lambda: measure(a), handled=(RunnerError,))


def measure(a) -> int:
    from client.runners import TritonRunner
    from client.video import open_source, segment_video
    from segformer.weights import atomic_write_bytes

    url = cli.url_of(a, "grpc")
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(a.frames, Path(tmp) / "clip.mp4", a.seconds, a.fps, (a.size[1], a.size[0]))
        rows = []
        for n in a.in_flight:
            s = segment_video(open_source(clip), lambda: TritonRunner(a.model, url, "grpc", a.timeout),
                              Path(tmp) / f"out{n}", n)
            rows.append({k: s[k] for k in ("in_flight", "frames", "wall_s", "fps_end_to_end", "server_compute_fps",
                                           "p50_ms", "p99_ms", "stopped")})
            print(f"in flight {n}: {s['fps_end_to_end']:.2f} fps end to end, p50 {s['p50_ms']:.0f} ms")
    best = max(rows, key=lambda r: r["fps_end_to_end"])
    result = {"model": a.model, "clip": {"seconds": a.seconds, "fps": a.fps, "size": [a.size[1], a.size[0]],
                                         "frames": rows[0]["frames"], "source": "CamVid test 0001TP, H.264"},
              "machine": machine(), "runs": rows, "best_in_flight": best["in_flight"]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(a.out.with_suffix(".json"), (json.dumps(result, indent=1) + "\n").encode())
    md = [f"# Video through `client.segment`: {a.model}", "",
          f"{a.seconds:.0f} s clip, {a.size[1]}x{a.size[0]} at {a.fps:g} fps ({rows[0]['frames']} frames); "
          f"{result['machine']}", "", "| in flight | fps end to end | model compute img/s | p50 ms | p99 ms |",
          "|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = " (best)" if r is best else ""
        md.append(f"| {r['in_flight']}{mark} | {r['fps_end_to_end']:.2f} | {r['server_compute_fps'] or 0:.2f} | "
                  f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} |")
    atomic_write_bytes(a.out.with_suffix(".md"), ("\n".join(md) + "\n").encode())
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
