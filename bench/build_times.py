"""Build time and engine size of every TensorRT variant, written to a results file.

    python -m bench.build_times [--variants ...] [--calib DIR] [--out results/build_bench]

Builds the plan rows into a scratch repository (the ONNX and quantization caches are reused, so the numbers are
the engine builds themselves plus any pass not cached yet) and writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from client.cli import run as run_cli
from build.artefacts import QuantSettings
from build.repository import write_repository
from build.variants import TENSORRT, select
from segformer.weights import atomic_write_bytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.build_times", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", help="TensorRT rows (default: every TensorRT row)")
    ap.add_argument("--calib", type=Path, help="calibration images for int8 / best")
    ap.add_argument("--holdout", type=Path, help="held-out images for the guards (default: the calibration folder)")
    ap.add_argument("--out", type=Path, default=Path("results/build_bench"), help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    return run_cli(lambda: measure(args))


def measure(args) -> int:
    rows = [v for v in select(args.variants) if v.backend == TENSORRT]
    scratch = Path(tempfile.mkdtemp(prefix="bench_build."))
    try:
        results = write_repository(rows, scratch / "repo", force=True, quant=QuantSettings(args.calib, args.holdout))
        table = []
        for v in rows:
            prov_path = scratch / "repo" / v.name / "build.json"
            prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
            table.append({"variant": v.name, "precision": v.precision, "layernorm": v.layernorm,
                          "result": results[v.name], "builder": prov.get("builder"),
                          "builder_version": prov.get("builder_version"),
                          "engine_build_s": prov.get("engine_build_seconds"),
                          "engine_mb": round(prov["engine_bytes"] / 1e6, 1) if prov.get("engine_bytes") else None,
                          "size": list(v.size), "profile": prov.get("profile")})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"), "rows": table}
    atomic_write_bytes(Path(f"{args.out}.json"), (json.dumps(meta, indent=1) + "\n").encode())
    md = ["| variant | precision | builder | build s | engine MB | result |", "|---|---|---|---:|---:|---|"]
    for r in table:
        md.append(f"| {r['variant']} | {r['precision']}{' +plugin' if r['layernorm'] == 'plugin' else ''} | "
                  f"{r['builder'] or '-'} {r['builder_version'] or ''} | {r['engine_build_s'] or '-'} | "
                  f"{r['engine_mb'] or '-'} | {r['result'].split(' (')[0]} |")
    atomic_write_bytes(Path(f"{args.out}.md"), ("\n".join(md) + "\n").encode())
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
