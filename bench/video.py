"""Video throughput: a clip made from CamVid test frames through `client.segment`'s video path, per in-flight count.

    python -m bench.video --model segformer_b1_ov --in-flight 1 2 4 [--seconds 10 --fps 10 --size 720x960] \
        [--url localhost:8001] [--shm system] --out docs/results/video_cpu_b1_ov
    python -m bench.video --no-model --in-flight 2 4 8 16 --seconds 10 --fps 30 --out docs/results/video_client_cpu

The clip: consecutive CamVid test frames (sequence 0001TP), scaled to --size, H.264 at --fps for --seconds. Each
in-flight count segments the whole clip once against the running server (gRPC; --shm system: frames and labels
through shared memory), or with --no-model against a runner in this process that answers at once (zero labels of
the size a --model-size model takes): the client pipeline alone, no model, its own ceiling. The table gives
end-to-end fps, the server's compute rate, p50/p99 latency per frame and each stage's time per frame (decode,
place, send/wait, overlay, encode; the stage whose threads are the busiest marked), and marks the count with the
highest fps. The CPU's model and flags (or the GPU's name) are recorded with the numbers.
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
    ap.add_argument("--no-model", action="store_true", help="no server: a runner here answers at once (zero labels "
                    "at --model-size): the client pipeline alone")
    ap.add_argument("--model-size", type=parse_size, default=(1024, 1024), metavar="HxW",
                    help="with --no-model: the input of the model it stands in for (default 1024x1024, "
                    "segformer_b1_gpu's), max batch 16")
    ap.add_argument("--shm", choices=("none", "system", "cuda"), default="none",
                    help="system: frames and labels through shared memory (a server on this host); cuda: frames "
                    "through CUDA shared memory (a GPU model on this host), labels through system shared memory")
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4], help="frames in flight to try")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    ap.add_argument("--fps", type=float, default=10.0, help="clip frame rate (default 10)")
    ap.add_argument("--size", type=parse_size, default=(720, 960), help="HxW of the clip (default 720x960)")
    ap.add_argument("--preset", default=None, help="libx264 preset of the overlay video (default: client.video's)")
    ap.add_argument("--overlay-threads", type=int, default=None, help="overlay threads (default: half the cores, "
                    "2-8)")
    ap.add_argument("--encoder-threads", type=int, default=None, help="libx264 threads (default: the cores, <= 16)")
    ap.add_argument("--encoder-thread-type", choices=("SLICE", "FRAME"), default=None,
                    help="libx264's threading: SLICE (default: each frame split over the threads) or FRAME")
    ap.add_argument("--frames", type=Path, default=Path("../shared/datasets/camvid/test/images"),
                    help="CamVid test frames the clip is made of")
    ap.add_argument("--note", default="", help="a line recorded with the numbers (e.g. which code was measured)")
    ap.add_argument("--out", type=Path, default=Path("results/video"), help="writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    from client.runners import RunnerError

    return cli.run(lambda: measure(a), handled=(RunnerError,))


def _runner(a):
    from client.runners import TritonRunner

    if a.no_model:
        from client.video_pipeline import NoModelRunner

        return NoModelRunner(a.model_size, max_batch=16)
    url = cli.url_of(a, "grpc")
    if a.shm != "none":
        from client.video_shm import shm_runner

        return shm_runner(a.shm, a.model, url, "grpc", a.timeout)
    return TritonRunner(a.model, url, "grpc", a.timeout)


STAGE_COLUMNS = ("decode", "place", "send", "overlay", "encode")


def measure(a) -> int:
    import os

    from client.video import open_source, segment_video
    from segformer.weights import atomic_write_bytes

    options = {k: v for k, v in (("preset", a.preset), ("overlay_threads", a.overlay_threads),
                                 ("encoder_threads", a.encoder_threads),
                                 ("encoder_thread_type", a.encoder_thread_type)) if v is not None}
    what = "client pipeline alone, no model" if a.no_model else f"{a.model} over gRPC" + (
        f" + {a.shm} shm" if a.shm != "none" else "")
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(a.frames, Path(tmp) / "clip.mp4", a.seconds, a.fps, (a.size[1], a.size[0]))
        rows = []
        for n in a.in_flight:
            runner = _runner(a)
            try:
                runner.activate()
                cpu0 = os.times()
                s = segment_video(open_source(clip), runner, Path(tmp) / f"out{n}", n, progress=False, **options)
                cpu1 = os.times()
            finally:
                runner.deactivate()
            row = {k: s.get(k) for k in ("in_flight", "frames", "wall_s", "fps_end_to_end", "server_compute_fps",
                                         "p50_ms", "p99_ms", "stopped", "encoder", "overlay_threads", "window",
                                         "max_frames_held", "transport")}
            row["stages"] = s.get("stages")
            cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)  # this process: every stage's threads
            row["cpu_ms_per_frame"] = 1e3 * cpu / s["frames"] if s["frames"] else None
            rows.append(row)
            print(f"in flight {n}: {s['fps_end_to_end']:.2f} fps end to end, p50 {s['p50_ms']:.0f} ms"
                  + (f" ({s['stopped']})" if s["stopped"] else ""))
    best = max(rows, key=lambda r: r["fps_end_to_end"])
    result = {"model": "none (client pipeline alone, no model)" if a.no_model else a.model, "what": what,
              "stand_in": {"size": list(a.model_size), "max_batch": 16} if a.no_model else None,
              "clip": {"seconds": a.seconds, "fps": a.fps, "size": [a.size[1], a.size[0]],
                       "frames": rows[0]["frames"], "source": "CamVid test 0001TP, H.264"},
              "machine": machine(), "cpus": os.cpu_count(), "note": a.note, "runs": rows,
              "best_in_flight": best["in_flight"]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(a.out.with_suffix(".json"), (json.dumps(result, indent=1) + "\n").encode())
    md = _markdown(a, result, rows, best, what)
    atomic_write_bytes(a.out.with_suffix(".md"), ("\n".join(md) + "\n").encode())
    print("\n".join(md))
    return 0


def _markdown(a, result, rows, best, what) -> list[str]:
    staged = any(r["stages"] for r in rows)
    md = [f"# Video through `client.segment`: {what}", "",
          f"{a.seconds:g} s clip, {a.size[1]}x{a.size[0]} at {a.fps:g} fps ({rows[0]['frames']} frames); "
          f"{result['machine']}" + (f"; stands in for a {a.model_size[0]}x{a.model_size[1]} model (max batch 16)"
                                    if a.no_model else ""), ""]
    if a.note:
        md += [a.note, ""]
    head = "| in flight | fps end to end | client CPU ms/frame | model compute img/s | p50 ms | p99 ms |"
    rule = "|---:|---:|---:|---:|---:|---:|"
    if staged:
        head += " " + " | ".join(f"{c} ms/frame" for c in STAGE_COLUMNS) + " | limit |"
        rule += "---:|" * len(STAGE_COLUMNS) + "---|"
    md += [head, rule]
    for r in rows:
        mark = " (best)" if r is best else ""
        line = (f"| {r['in_flight']}{mark} | {r['fps_end_to_end']:.2f} | {r['cpu_ms_per_frame'] or 0:.1f} | "
                f"{r['server_compute_fps'] or 0:.2f} | "
                f"{r['p50_ms'] or 0:.0f} | {r['p99_ms'] or 0:.0f} |")
        if staged and r["stages"]:
            st = r["stages"]
            ceilings = {k: v["fps_ceiling"] for k, v in st.items() if v["fps_ceiling"]}
            line += " " + " | ".join(f"{st[c]['ms_per_frame']:.2f}" for c in STAGE_COLUMNS)
            line += f" | {min(ceilings, key=ceilings.get) if ceilings else ''} |"
        md.append(line)
    if staged:
        r = best
        md += ["", f"Stage times are thread time per frame summed over the stage's threads (decode 1 thread; place "
               f"and send/wait {r['in_flight']}; overlay {r['overlay_threads']}; encode 1 + libx264's "
               f"{r['encoder']['threads']} at preset {r['encoder']['preset']}); `limit`: the stage with the least "
               "threads / time per frame. Place includes the YUV->RGB conversion of the decoded frame and the "
               "labels' way back to the frame's size. Client CPU: this process's user + system time per frame "
               "(every thread, libx264's and PyAV's included): the cores the client needs at a rate."]
    return md


if __name__ == "__main__":
    raise SystemExit(main())
