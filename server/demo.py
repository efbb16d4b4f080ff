"""The demo behind `make demo`: build one model, start Triton, segment an image, print what happened, stop.

    python -m server.demo [--image samples/camvid_0001TP_008550.jpg] [--model auto]

`--model auto` (the default) serves the fastest CPU row this CPU runs within the accuracy budget: OpenVINO bf16
(guarded: whole graph, f32 prefix or f32, see build.openvino_ir) where the CPU has AVX512-BF16 or AMX, else
OpenVINO f32 (exact).
"""
from __future__ import annotations

import argparse
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
        if a.model == "auto":
            from build.openvino_ir import has_bf16

            a.model = "segformer_b1_ov_bf16" if has_bf16() else "segformer_b1_ov"
            print(f"model: {a.model} ({'this CPU has bf16' if has_bf16() else 'no bf16 on this CPU'})")
        rows = select([a.model])
        results = write_repository(rows, a.repo)
        if results[a.model] not in ("built", "unchanged"):
            raise ServerError(f"{a.model}: {results[a.model]}")
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
