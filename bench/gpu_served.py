"""The served half of `make bench`: segformer_b1_gpu (or --served-row) in the pip Triton, loaded by
loadtest.closed_loop; and the video section (bench.video against the same kind of server).

Scenarios (each one Triton start, or two for the two-server one; every point of a scenario measured in the same
run as the others):
- ``shm1mb``: one GPU, the python backend's shared-memory pool at Triton's defaults (1 MB, growing 1 MB at a
  time): JPEG sweep, raw frames over system shared memory, raw frames over CUDA shared memory;
- ``shm256mb``: the same server with the pool at 256 MB (growing 64 MB): raw frames over system shared memory
  and on the wire (what `make serve` now passes);
- ``quick``: the 256 MB pool, one JPEG point and two raw-frames-over-CUDA-shared-memory points (`make bench`'s
  default: about 2 minutes);
- ``inputs``: one GPU, a point of each payload, for the model's per-stage input timing;
- ``gpu0`` / ``allgpus``: one Triton seeing GPU 0 only, or every GPU (the config's instance group is placed on
  each GPU): JPEG points, for the multi-GPU scaling;
- ``twoservers``: one Triton per GPU (CUDA_VISIBLE_DEVICES), the closed-loop client spread over both (`--url
  a,b`), the shape a cluster has.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import tempfile
import time
from pathlib import Path

SMALL_POOL = ("--backend-config=python,shm-default-byte-size=1048576",
              "--backend-config=python,shm-growth-byte-size=1048576")
BIG_POOL = ("--backend-config=python,shm-default-byte-size=268435456",
            "--backend-config=python,shm-growth-byte-size=67108864")
JPEG_POINTS = [(8, 2), (8, 4), (12, 4), (16, 4)]
SCENARIOS = {
    "shm1mb": {"gpus": "0", "servers": 1, "args": SMALL_POOL,
               "loads": [("jpeg", JPEG_POINTS), ("raw-shm", [(8, 2), (16, 4)]), ("raw-cuda", [(8, 2), (16, 4)])]},
    "shm256mb": {"gpus": "0", "servers": 1, "args": BIG_POOL,
                 "loads": [("raw-shm", [(8, 2), (16, 4)]), ("raw", [(8, 2)]), ("raw-cuda", [(16, 4)])]},
    "quick": {"gpus": "0", "servers": 1, "args": BIG_POOL,
              "loads": [("jpeg", [(16, 4)]), ("raw-cuda", [(8, 2), (16, 4)])]},
    "inputs": {"gpus": "0", "servers": 1, "args": BIG_POOL,
               "loads": [("raw-cuda", [(8, 2), (16, 4)]), ("raw-shm", [(16, 4)]), ("jpeg", [(16, 4)])]},
    "gpu0": {"gpus": "0", "servers": 1, "args": BIG_POOL,
             "loads": [("jpeg", [(16, 4), (24, 4)]), ("raw-shm", [(16, 4)])]},
    "allgpus": {"gpus": "all", "servers": 1, "args": BIG_POOL, "loads": [("jpeg", [(16, 4), (24, 4), (32, 4)])]},
    "twoservers": {"gpus": "each", "servers": 2, "args": BIG_POOL, "loads": [("jpeg", [(16, 4), (24, 4), (32, 4)])]},
}


def served(args, log) -> dict:
    """Run each scenario in args.served_scenarios; rows measured before a failure are kept."""
    import os

    rows, timing, errors = [], {}, []
    previous = os.environ.get("SEGFORMER_GPU_TIMING")
    os.environ["SEGFORMER_GPU_TIMING"] = "1"  # the model prints per-stage times to the server log
    try:
        for name in args.served_scenarios:
            try:
                _scenario(name, SCENARIOS[name], args, log, rows, timing)
            except Exception as exc:  # noqa: BLE001 - kept in the results with the rows measured before it
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                log(f"served scenario {name} failed: {exc}")
    finally:
        if previous is None:
            os.environ.pop("SEGFORMER_GPU_TIMING", None)
        else:
            os.environ["SEGFORMER_GPU_TIMING"] = previous
    return {"rows": rows, "stage_timing": timing, **({"error": "; ".join(errors)} if errors else {})}


def _scenario(name: str, sc: dict, args, log, rows: list, timing: dict) -> None:
    from loadtest import closed_loop

    with _tritons(name, sc, args, log, timing) as (row, urls, metrics):
        for payload, points in sc["loads"]:
            for nproc, conc in points:
                a = closed_loop.parser().parse_args(
                    ["--model", row.name, "--url", ",".join(urls), "--metrics-url", metrics[0],
                     "--processes", str(nproc), "--concurrency", str(conc), "--duration", str(args.served_duration),
                     "--payload", payload, "--images", args.images or "",
                     *(["--size", "x".join(map(str, args.served_size))] if getattr(args, "served_size", None) else [])])
                s = {**closed_loop.run(a), "scenario": name, "instances": args.served_instances,
                     "gpus": sc["gpus"], "servers": sc["servers"]}
                rows.append(s)
                log(f"{name} {payload} in-flight {s['in_flight']}: {s['img_per_s']:.0f} img/s "
                    f"p50 {s['p50_ms'] or float('nan'):.1f} p99 {s['p99_ms'] or float('nan'):.1f} "
                    f"failures {s['failures']} {s['errors'][:1]}")


@contextlib.contextmanager
def _tritons(name: str, sc: dict, args, log, timing: dict):
    """The scenario's Triton(s) serving args.served_row, ready: yields (row, gRPC urls, metrics urls). Each server
    log's `[segformer_gpu]` stage lines go to `timing`; the whole log is copied next to OUT only if it failed."""
    from build.repository import write_repository
    from build.variants import VARIANTS, imported_rows
    from server import serve

    row_name = getattr(args, "served_row", None) or "segformer_b1_gpu"
    rows = {**VARIANTS, **imported_rows()}  # the shipped rows and those of every imported weights entry
    if row_name not in rows:
        raise RuntimeError(f"--served-row {row_name}: no such row (shipped rows in build.variants, or a row of an "
                           "entry imported with python -m build.import_weights)")
    scratch = Path(tempfile.mkdtemp(prefix=f"bench_gpu.{name}."))
    procs, urls, metrics, ok = [], [], [], False
    try:
        repo = scratch / "repo"
        row = dataclasses.replace(rows[row_name], instances=args.served_instances)
        size = getattr(args, "served_size", None)
        if size and row.size_range:  # a dynamic row captures the measured size at load, and only that one
            row = dataclasses.replace(row, extra={**row.extra, "sizes": f"{size[0]}x{size[1]}"})
        res = write_repository([row], repo, force=True, log=log)
        if res[row.name] not in ("built", "unchanged"):
            raise RuntimeError(f"{row.name}: {res[row.name]}")
        if not serve.has_gpu():  # the launcher leaves KIND_GPU rows out on such a machine: say why up front
            raise RuntimeError(f"{row.name} needs a CUDA GPU: this machine has none (Triton refuses KIND_GPU "
                               "instances without one)")
        t0 = time.perf_counter()
        for k in range(sc["servers"]):
            env = {} if sc["gpus"] == "all" else {"CUDA_VISIBLE_DEVICES": str(k) if sc["gpus"] == "each" else sc["gpus"]}
            ports = (8000 + 10 * k, 8001 + 10 * k, 8002 + 10 * k)
            procs.append(serve.start(repo, *ports, state=scratch / f"state{k}", timeout=args.served_start_timeout,
                                     extra_args=sc["args"], env_extra=env))
            urls.append(f"localhost:{ports[1]}")
            metrics.append(f"localhost:{ports[2]}")
        log(f"{name}: {len(procs)} Triton(s) ready in {time.perf_counter() - t0:.0f} s")
        yield row, urls, metrics
        ok = True
    finally:
        for p in procs:
            serve.stop_pid(p.pid)
        for k in range(sc["servers"]):  # a server that failed to start has its log too
            log_path = scratch / f"state{k}" / "server.log"
            if log_path.is_file():
                text = log_path.read_text(errors="replace")
                if not ok:
                    shutil.copy2(log_path, f"{args.out}.{name}.server{k}.log")
                timing[f"{name}/{k}"] = re.findall(r"\[segformer_gpu\].*", text)[-3:]
        shutil.rmtree(scratch, ignore_errors=True)


def video(args, log) -> dict:
    """bench.video (its CLI, in a subprocess) against one Triton serving args.served_row on GPU 0: its rows, or
    what stopped it under `skipped`."""
    import json
    import shlex
    import subprocess
    import sys

    sec, timing = {"skipped": [], "stage_timing": {}}, {}
    try:
        with _tritons("video", SCENARIOS["shm256mb"], args, log, timing) as (row, urls, _), \
                tempfile.TemporaryDirectory(prefix="bench_gpu.video.") as tmp:
            cmd = [sys.executable, "-m", "bench.video", "--model", row.name, "--url", urls[0],
                   "--out", str(Path(tmp) / "video"), *(["--frames", args.images] if args.images else []),
                   *shlex.split(args.video_args or "")]
            log("video: " + " ".join(cmd))
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"bench.video exited {res.returncode}: "
                                   + (res.stderr.strip().splitlines() or ["no output"])[-1])
            sec.update(json.loads((Path(tmp) / "video.json").read_text()), command=" ".join(cmd[1:]))
    except Exception as exc:  # noqa: BLE001 - recorded with the section
        sec["skipped"].append({"what": "video", "why": f"{type(exc).__name__}: {exc}", "failed": True})
        log(f"video failed: {exc}")
    sec["stage_timing"] = timing
    return sec


def knee(rows: list[dict], ratio: float = 2.0) -> dict | None:
    """Highest throughput whose p99 stays within `ratio` x its p50, with no failures."""
    ok = [r for r in rows if r["requests"] and not r["failures"] and r["p99_ms"] <= ratio * r["p50_ms"]]
    return max(ok, key=lambda r: r["img_per_s"]) if ok else None


def plot_served(ax, served_rows: list[dict]) -> None:
    for key in dict.fromkeys((r.get("scenario", r.get("instances")), r["payload"]) for r in served_rows):
        rows = [r for r in served_rows if (r.get("scenario", r.get("instances")), r["payload"]) == key
                and r["p99_ms"]]
        ax.plot([r["p99_ms"] for r in rows], [r["img_per_s"] for r in rows], "o-", label=f"{key[1]}, {key[0]}")
        for r in rows:
            ax.annotate(str(r["in_flight"]), (r["p99_ms"], r["img_per_s"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xlabel="p99 latency (ms)", ylabel="images per second", title="served through Triton (labels: in flight)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
