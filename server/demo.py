"""The demo behind `make demo`: build one model, start Triton, segment an image, print what happened, stop.

    python -m server.demo [--image samples/camvid_0001TP_008550.jpg] [--model auto]

`--model auto` (the default) serves the fastest CPU row that passed its accuracy guard on this CPU: of the OpenVINO
rows already in the repository (INT8 + bf16, bf16, f32), those whose build.json says their guard passed on a CPU
with this one's features are timed on one frame (a micro-timing: compile, warm up, best of 2) and the fastest is
served; a row whose guard failed is named with by how much and what it fell back to. With none built: bf16 where
the CPU has AVX512-BF16 or AMX (guarded, see build.openvino_ir), else f32 (exact).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from build.repository import write_repository
from build.variants import select
from client import cli
from client.preprocess import ImageError
from client.runners import RunnerError, TritonRunner
from client.segment import segment_files
from server.serve import STATE, ServerError, preflight, start, stop_pid

ROOT = Path(__file__).resolve().parent.parent
CPU_ROWS = ("segformer_b1_ov_int8", "segformer_b1_ov_bf16", "segformer_b1_ov")  # the OpenVINO CPU rows


def verdict(build: dict, flags: list[str]) -> tuple[bool, str]:
    """(passed on this CPU, why) from a row's build.json."""
    from build.openvino_ir import guard_verdict

    return guard_verdict(build.get("openvino_plan") or {}, flags)


def micro_time(folder: Path, size) -> float:
    """Seconds for one frame through the plan in `folder` (compiled and warmed up first; best of 2)."""
    import numpy as np

    from server.models.segformer_runtime import PlanRunner

    runner, x = PlanRunner(folder), np.zeros((1, *size, 3), np.uint8)
    runner.run(x)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        runner.run(x)
        times.append(time.perf_counter() - t)
    return min(times)


def pick_cpu_row(repo: Path, flags: list[str], timer=micro_time, say=print) -> str:
    """The fastest built OpenVINO row whose guard passed on this CPU (micro-timed), said why; with none built,
    bf16 where the CPU has it, else f32."""
    from build.openvino_ir import has_bf16
    from build.variants import VARIANTS

    passed = {}
    for row in CPU_ROWS:
        build = repo / row / "build.json"
        if not build.is_file():
            continue
        ok, why = verdict(json.loads(build.read_text()), flags)
        say(f"  {row}: {why}")
        if ok:
            passed[row] = timer(repo / row / "1", VARIANTS[row].size)
    if passed:
        best = min(passed, key=passed.get)
        say(f"model: {best} (the fastest row that passed its guard on this CPU: " +
            ", ".join(f"{r} {t:.3f} s/frame" for r, t in sorted(passed.items(), key=lambda kv: kv[1])) + ")")
        return best
    bf16 = has_bf16(flags)
    row = "segformer_b1_ov_bf16" if bf16 else "segformer_b1_ov"
    say(f"model: {row} (no guarded CPU row built yet; {'this CPU has bf16' if bf16 else 'no bf16 on this CPU'})")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=ROOT / "samples" / "camvid_0001TP_008550.jpg")
    ap.add_argument("--model", default="auto", help="row of build/variants.py served by pip Triton (default: the "
                                                    "fastest CPU row within budget)")
    ap.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--out", type=Path, default=ROOT / "out")
    cli.add_listen_options(ap)
    a = ap.parse_args(argv)
    return cli.run(lambda: demo(a), handled=(RunnerError, ImageError, ValueError))


def demo(a) -> int:
    times, proc = {}, None
    state = STATE / "demo"  # its own: a `make serve` server keeps its pid file and admin key
    preflight(state, a.host, a.http_port, a.grpc_port, a.metrics_port)  # before building: a held port is named
    t0 = time.perf_counter()
    try:
        auto = a.model == "auto"
        if auto:
            from build.openvino_ir import cpu_flags

            a.model = pick_cpu_row(a.repo, cpu_flags())
        rows = select([a.model])
        results = write_repository(rows, a.repo)
        if results[a.model] not in ("built", "unchanged"):
            raise ServerError(f"{a.model}: {results[a.model]}")
        if auto:  # what the served row's guard said (a fresh build's too)
            from build.openvino_ir import cpu_flags

            print(f"  {a.model}: {verdict(json.loads((a.repo / a.model / 'build.json').read_text()), cpu_flags())[1]}")
        times["model repository"] = time.perf_counter() - t0
        t = time.perf_counter()
        proc = start(a.repo, a.http_port, a.grpc_port, a.metrics_port, state=state, host=a.host)
        times["Triton start (to ready)"] = time.perf_counter() - t
        t = time.perf_counter()
        with TritonRunner(a.model, f"{cli.LOCAL}:{a.http_port}") as runner:
            res = segment_files([a.image], runner, a.out)
            times["segment (client, incl. first inference)"] = time.perf_counter() - t
            times["  of which inference"] = res[0]["infer_s"]
            again = segment_files([a.image], runner, a.out, quiet=True)  # the first request compiled its shape
            times["inference, second request"] = again[0]["infer_s"]
    finally:
        if proc is not None:
            t = time.perf_counter()
            stop_pid(proc.pid)
            (state / "server.pid").unlink(missing_ok=True)
            times["Triton stop"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    print("\nstage timings:")
    for k, v in times.items():
        print(f"  {k:<40s} {v:7.2f} s")
    print(f"\nLook at {res[0]['overlay']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
