"""perf_analyzer beside the closed-loop generator: the same model, concurrency and payload, measured in one run.

    python -m loadtest.perf --model segformer_null --protocol grpc --url localhost:8001 --concurrency 1:4:1 \\
        --payload raw-shm [--images DIR] --out docs/results/perf_cpu
    python -m loadtest.perf fetch        # get perf_analyzer where `pip install perf-analyzer` finds no wheel

perf_analyzer gets the input policy's frames as its --input-data (JPEG files as the row's `encoded` input for
--payload jpeg; the tensors in system shared memory for raw-shm) and sweeps the concurrency range in time windows;
then `loadtest.closed_loop` measures each concurrency with the same frames and payload. Both land in
OUT.json / OUT.md (runs of other models, protocols or payloads already there are kept), with the reasons where
the two disagree.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from client import cli
from loadtest.perf import analyzer, binary, compare
from segformer.errors import ProjectError

FRAMES = 8


class PayloadError(ProjectError):
    """The payload does not fit the row (jpeg to a row without an `encoded` input)."""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m loadtest.perf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_option(ap, "segformer_null")
    cli.add_server_options(ap, default="grpc", timeout=60.0, metrics=True, several=False)
    ap.add_argument("--concurrency", default="1:4:1", help="START:END[:STEP] requests in flight (default 1:4:1)")
    ap.add_argument("--payload", choices=analyzer.PAYLOADS, default="raw",
                    help="raw tensor on the wire, raw-shm (system shared memory, in and out), jpeg (the row's "
                         "`encoded` input)")
    ap.add_argument("--batch", type=int, default=1, help="images per request (default 1)")
    cli.add_images_option(ap)
    ap.add_argument("--interval-ms", type=int, default=2000, help="perf_analyzer's time window (default 2000)")
    ap.add_argument("--stability", type=int, default=25,
                    help="percent within which perf_analyzer's last three windows must agree (default 25)")
    ap.add_argument("--max-trials", type=int, default=6, help="perf_analyzer's windows per concurrency at most")
    ap.add_argument("--duration", type=float, default=4.0, help="closed loop: measured seconds per concurrency")
    ap.add_argument("--warmup", type=float, default=1.0, help="closed loop: seconds before measuring")
    ap.add_argument("--processes", type=int, default=1,
                    help="closed loop: load processes sharing each concurrency's requests (default 1)")
    ap.add_argument("--note", action="append", default=[], help="a sentence for the results (repeatable)")
    ap.add_argument("--out", type=Path, help="results prefix: writes OUT.json and OUT.md")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fetch"]:
        return cli.run(_fetch)
    args = parser().parse_args(argv)
    args.url = cli.url_of(args)
    return cli.run(lambda: _main(args), handled=(ValueError, OSError))


def _fetch() -> int:
    """A runnable perf_analyzer: the one found, else the wheel fetched (and shimmed where glibc is older)."""
    try:
        found = binary.locate()
    except binary.PerfAnalyzerMissing:
        binary.fetch(quiet=False)
        found = binary.locate()
    print(f"{found} ({binary.version(found)})")
    return 0


def describe(args) -> tuple:
    """(ModelInfo, input names, server version) of the served row; RunnerError when it is not served."""
    from client.runners import TritonRunner

    runner = TritonRunner(args.model, args.url, args.protocol, args.timeout)
    try:
        info = runner.activate()
        inputs = [i["name"] for i in runner.metadata().get("inputs", [])]
        try:
            version = runner.client.get_server_metadata()
            version = version["version"] if isinstance(version, dict) else version.version
        except Exception:  # noqa: BLE001 - the version is a note in the results, not a requirement
            version = "?"
    finally:
        runner.deactivate()
    return info, inputs, version


def closed_loop(args, concurrency: int) -> dict:
    """closed_loop.run for one concurrency, its output path matched to perf_analyzer's (shm only for raw-shm)."""
    from loadtest import closed_loop as cl

    per = max(1, concurrency // max(1, args.processes))
    ns = SimpleNamespace(model=args.model, url=args.url, protocol=args.protocol, timeout=args.timeout,
                         metrics_url=args.metrics_url, processes=max(1, concurrency // per), concurrency=per,
                         duration=args.duration, warmup=args.warmup, payload=args.payload,
                         output="shm" if args.payload == "raw-shm" else "wire", batch=args.batch,
                         images=args.images)
    s = cl.run(ns)
    s["concurrency"] = concurrency
    return s


def perf_analyzer(args, pa_bin: Path, c: int, data: Path, csv_path: Path, output_bytes: int):
    """perf_analyzer at one concurrency (warm-up requests first); an unstable measurement is tried once more with
    windows twice as long. (record or None, argv, error or None)."""
    warmup = max(2, 2 * c)
    error = None
    for interval in (args.interval_ms, 2 * args.interval_ms):
        m = analyzer.Measurement(interval, args.stability, args.max_trials, warmup)
        argv = analyzer.command(pa_bin, args.model, args.url, args.protocol, str(c), args.payload, data, csv_path,
                                m, args.batch, output_bytes)
        csv_path.unlink(missing_ok=True)
        try:
            rows, _ = analyzer.run(argv, csv_path)
            return {**rows[0], "interval_ms": interval}, argv, None
        except analyzer.PerfAnalyzerError as exc:
            if "stable" not in str(exc).lower():
                raise
            error = str(exc)
    return None, argv, error


def _main(args) -> int:
    from client.policy import InputPolicy
    from loadtest.run import _local

    levels = analyzer.concurrency_range(args.concurrency)
    _local(args.url)
    info, inputs, server_version = describe(args)
    pa_bin = binary.locate()
    if args.payload == "jpeg" and "encoded" not in inputs:
        raise PayloadError(f"{args.model} takes no JPEG (its inputs: {', '.join(inputs)}): use --payload raw or "
                           "raw-shm, or a row with an `encoded` input (segformer_b1_gpu)")
    if args.batch < 1 or args.batch > max(1, info.max_batch):
        raise ValueError(f"--batch {args.batch}: {args.model} takes 1..{max(1, info.max_batch)} images a request")
    frames = InputPolicy.for_model(info).frames(args.images, FRAMES)
    h, w = frames[0].shape[:2]
    errors, pa_rows, ours = [], [], []
    with tempfile.TemporaryDirectory(prefix="perf_") as tmp:
        data = analyzer.write_input_data(Path(tmp) / "input.json", frames, args.payload, args.batch)
        csv_path = Path(tmp) / "perf_analyzer.csv"
        for c in cli.progress(levels, desc=f"{args.model} {args.protocol} {args.payload}", unit="level"):
            rec, argv, error = perf_analyzer(args, pa_bin, c, data, csv_path, args.batch * h * w)
            pa_rows += [rec] if rec else []
            errors += [f"concurrency {c}: {error}"] if error else []
            ours.append(closed_loop(args, c))
    by_c = {r["concurrency"]: r for r in pa_rows}
    rows = [compare.row(by_c.get(s["concurrency"]), s, args.payload, args.protocol, args.interval_ms) for s in ours]
    run = {"model": args.model, "protocol": args.protocol, "payload": args.payload, "batch": args.batch,
           "host": compare.host(), "server_version": server_version,
           "perf_analyzer_version": binary.version(pa_bin), "shim": pa_bin.parent.name == "compat",
           "perf_analyzer_command": " ".join(Path(a).name if a in (str(pa_bin), str(data), str(csv_path)) else a
                                             for a in argv),
           "interval_ms": args.interval_ms, "stability": args.stability, "duration_s": args.duration,
           "warmup_s": args.warmup, "processes": args.processes, "input_shape": [args.batch, h, w, 3],
           "frames": len(frames), "images": args.images or None, "rows": rows, "errors": errors, "notes": args.note}
    for x in rows:
        pa, cl = x["perf_analyzer"], x["closed_loop"]
        print(f"{args.model} {args.protocol} {args.payload} c={x['concurrency']}: perf_analyzer "
              f"{compare._f(pa['infer_per_s'])} img/s p99 {compare._f(pa['p99_ms'], '{:.1f}')} ms | closed loop "
              f"{compare._f(cl['img_per_s'])} img/s p99 {compare._f(cl['p99_ms'], '{:.1f}')} ms")
    if args.out:
        js, md = compare.write(args.out, run)
        print(f"wrote {md} and {js.name}")
    failed = errors or any(x["closed_loop"]["failures"] or not x["closed_loop"]["requests"] for x in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
