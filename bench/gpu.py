"""GPU benchmark of the fast path against Hugging Face SegFormer: every section of one call in one results file.

    python -m bench.gpu [--sizes 1024x1024:1,8,16 1024x2048:1,8] [--variants b1 b2@1024x1024] [--paths NAME ...]
        [--sections model kernels served video] [--images DIR] [--profile] [--out results/bench_gpu]
    python -m bench.gpu --readme docs/results/NAME.json [--readme-into README.md]

Sections (--sections; each is stamped with the card, date and torch version, and says what it skipped and why):
- model: per input size (HxW, with its own batch list after a colon) and model (--variants: b0..b5 or a weights
  entry; `b2@1024x1024` limits a model to some sizes), ours through segformer.fast.build_fast per --paths name
  (uint8 [N,H,W,3] on the GPU -> uint8 labels on the GPU, CUDA graphs, CUDA-event timed, median of repeats),
  beside HF transformers SegFormer of the same architecture eager FP16 and under torch.compile (its own initial
  weights: speed only). A model with no shipped weights (B2..B5) runs on random-initialised weights, labelled
  "random-init (speed only)". Agreement: share of pixels where each path's labels equal the FP32 PyTorch
  reference (TF32 off) on --images prepared as clients send them (client.policy, `fit`), shipped weights only.
- kernels: bench.kernels_gpu's depthwise 3x3 + GELU rows (ours vs PyTorch vs the copy floor).
- mixffn: bench.kernels_mixffn's whole-Mix-FFN kernel rows (fused vs round 2 vs torch vs the floors).
- served: bench.gpu_served's scenarios (Triton from nvidia-pytriton, loadtest.closed_loop).
- video: bench.video through its CLI in a subprocess against a Triton serving --served-row.
Writes OUT.json, OUT.md and OUT.png after every section (a call stopped part-way keeps what it measured);
--replot redraws them from a JSON; --readme prints README's GPU block from a results file.

GPU time on one H100 (round-2 figures): ours 30-60 s of compile and CUDA-graph capture per model, size and path;
HF torch.compile (default) 15-25 s per batch shape, max-autotune more than 350 s cold (--hf-max-autotune: the
first model and size only); kernels ~30 s; mixffn ~1.5 min; served 1.5-2 min per scenario (Triton start + 10 s
per point); video ~1 min. `make bench`'s default (B1 at 1024x1024 and 1024x2048, B2 at 1024x1024, kernels,
served `quick`): ~7 min.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench import BenchError
from bench.gpu_measure import agreement, cuda_ms, hf_pipeline, kernel_profile, path_kwargs
from bench.gpu_report import annotate, markdown, plot, readme_block, readme_into

__all__ = ["agreement", "cuda_ms", "hf_pipeline", "kernel_profile", "markdown", "main", "plot"]  # others import these

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("model", "kernels", "mixffn", "served", "video")
DEFAULT_BATCHES = (1, 8, 16)


def size_spec(text: str) -> tuple[tuple[int, int], tuple[int, ...] | None]:
    """``1024x2048`` or ``1024x2048:1,8`` -> ((1024, 2048), None or (1, 8)): an input size and its batch list."""
    from segformer.config import check_size, parse_size

    size_text, colon, batches = str(text).partition(":")
    try:
        size = check_size(parse_size(size_text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        bs = tuple(int(b) for b in batches.split(",")) if colon else None
    except ValueError:
        bs = ()
    if bs is not None and (not bs or min(bs) < 1):
        raise argparse.ArgumentTypeError(f"{text!r}: the batch list must be positive integers, e.g. 1024x2048:1,8")
    return size, bs


def size_spec_plain(text: str) -> tuple[int, int]:
    """``1024x2048`` -> (1024, 2048), refused in argparse's one line where it is no size."""
    from segformer.config import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def variant_spec(text: str) -> tuple[str, tuple[tuple[int, int], ...] | None]:
    """``b2`` or ``b2@1024x1024[,1024x2048]`` -> (model, the sizes it runs at or None for every size)."""
    from segformer.config import parse_size

    name, _, sizes = str(text).partition("@")
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r}: a variant (b0..b5) or weights entry before the @")
    try:
        return name, tuple(parse_size(s) for s in sizes.split(",")) if sizes else None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=["model"],
                    help="what this call measures (default: model)")
    ap.add_argument("--weights", default="segformer-b1-camvid",
                    help="the shipped weights entry of the first variant; classes and normalisation of the others")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--sizes", type=size_spec, nargs="+", metavar="HxW[:B,B]",
                   help="input sizes, each with its batch list (default 1024x1024 with --batches)")
    g.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="one input size (same as --sizes HxW)")
    ap.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES),
                    help="batch sizes of ours for a size given without its own list (default 1 8 16)")
    ap.add_argument("--variants", type=variant_spec, nargs="+", metavar="MODEL[@HxW,...]",
                    help="b0..b5 or a weights entry; @sizes limits it to those of --sizes (default: --weights' own)")
    ap.add_argument("--paths", nargs="+", default=[None], metavar="NAME",
                    help="fast-path variants of ours, build_fast(mixffn=NAME) (or `fused` / `unfused` for a "
                         "build_fast without mixffn); default: build_fast's own default")
    ap.add_argument("--compile-modes", nargs="+", default=["default"],
                    help="torch.compile modes for ours ('none' = eager; 'max-autotune-no-cudagraphs': our own CUDA "
                         "graphs capture the result)")
    ap.add_argument("--hf-batches", type=int, nargs="+",
                    help="batch sizes of the HF peer (default: the largest batch of each size)")
    ap.add_argument("--hf-compile-modes", nargs="+", default=["default"],
                    help="torch.compile modes for the HF peer at every size (default: default)")
    ap.add_argument("--hf-max-autotune", action="store_true",
                    help="also HF under torch.compile max-autotune, first model and size only (cold: > 350 s)")
    ap.add_argument("--skip-hf-compile", action="store_true", help="HF eager only (no torch.compile of the peer)")
    ap.add_argument("--profile", action="store_true", help="per-kernel GPU time of ours at each size's largest batch")
    ap.add_argument("--images", default="", help="real images for the agreement check (and the served/video runs)")
    ap.add_argument("--limit", type=int, default=16, help="at most this many --images (default 16)")
    ap.add_argument("--kernels-batch", type=int, default=16,
                    help="batch of the kernels and mixffn sections (default 16)")
    ap.add_argument("--served", action="store_true", help="same as adding `served` to --sections")
    ap.add_argument("--served-only", action="store_true", help="same as --sections served")
    ap.add_argument("--served-duration", type=float, default=8.0, help="seconds per served point (default 8)")
    ap.add_argument("--served-instances", type=int, default=2, help="model instances per GPU")
    ap.add_argument("--served-scenarios", nargs="+",
                    help="see bench.gpu_served (default: shm1mb shm256mb, and gpu0 allgpus twoservers where there "
                         "are two or more GPUs)")
    ap.add_argument("--served-row", default="segformer_b1_gpu",
                    help="the row served (and in video): a build.variants row or one of an imported weights entry")
    ap.add_argument("--served-size", type=size_spec_plain, metavar="HxW",
                    help="served frames of this size (a dynamic-size row, e.g. 1024x2048, its only size captured at "
                         "load; default: the row's own)")
    ap.add_argument("--served-start-timeout", type=float, default=300.0, help="seconds for Triton to load the model")
    ap.add_argument("--video-args", default="", help="more arguments for bench.video, one string (e.g. "
                                                     "'--in-flight 1 4 --seconds 5')")
    ap.add_argument("--out", type=Path, default=Path("results/bench_gpu"), help="writes OUT.json, OUT.md and OUT.png")
    ap.add_argument("--replot", type=Path, metavar="JSON", help="only redraw <JSON>.png and .md from a results file")
    ap.add_argument("--readme", type=Path, metavar="JSON", help="print README's GPU block from a results file")
    ap.add_argument("--readme-into", type=Path, metavar="README",
                    help="with --readme: write the block between README's markers for that file instead")
    return ap


def main(argv=None) -> int:
    import os

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "torchinductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(ROOT / ".cache" / "triton"))
    args = parser().parse_args(argv)
    args.command = "python -m bench.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    from client.cli import run as run_cli

    return run_cli(lambda: measure(args))


def plan(args) -> list[tuple[dict, tuple[int, int], list[int]]]:
    """(model, size, batches) for every model section, checked here before any GPU time is spent."""
    from segformer.config import VARIANTS
    from segformer.weights import find_entry, get_weights

    sizes = args.sizes or [size_spec("x".join(map(str, args.size or (1024, 1024))))]
    first = get_weights(args.weights)
    models = []
    for name, only in args.variants or [(first.variant, None)]:
        if name.lower() in VARIANTS:
            v = name.lower()
            shipped = args.weights if first.variant == v else (f"segformer-{v}-camvid" if find_entry(
                f"segformer-{v}-camvid") else None)
            model = {"variant": v, "weights": shipped, "weights_name": shipped or f"segformer-{v}-random-init",
                     "shipped": shipped is not None}
        else:
            w = get_weights(name)  # a WeightsError names the entries there are
            model = {"variant": w.variant, "weights": name, "weights_name": w.name, "shipped": True}
        missing = [s for s in only or () if s not in [sz for sz, _ in sizes]]
        if missing:
            raise BenchError(f"--variants {name}@...: {', '.join(f'{h}x{w}' for h, w in missing)} not in --sizes")
        models.append((model, only))
    for p in args.paths:
        path_kwargs(p)
    return [(m, size, list(bs or args.batches)) for size, bs in sizes for m, only in models
            if only is None or size in only]


def _stamp() -> dict:
    import torch

    return {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "torch": torch.__version__}


def measure(args) -> int:
    if args.replot:
        result = json.loads(args.replot.read_text())
        plot(result, args.replot.with_suffix(".png"))
        _write_text(args.replot.with_suffix(".md"), markdown(result))
        return 0
    if args.readme:
        return _readme(args)
    if args.readme_into:
        raise BenchError("--readme-into needs --readme JSON (the results file the block is made from)")
    sections = ["served"] if args.served_only else list(dict.fromkeys(args.sections + (["served"] if args.served
                                                                                       else [])))
    args.compile_modes = [None if m == "none" else m for m in args.compile_modes]
    try:
        import torch
    except ImportError:
        raise BenchError("the GPU benchmark needs PyTorch with CUDA") from None
    todo = plan(args) if "model" in sections else []
    if args.images and not Path(args.images).is_dir():
        raise BenchError(f"--images {args.images}: no such folder (a folder of real images)")
    if not torch.cuda.is_available():
        raise BenchError("no CUDA GPU here: run `make bench` on a machine with an NVIDIA GPU")

    def log(msg):
        print(msg, flush=True)

    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    result = {"format": 2, **_stamp(), "host": platform.node(), "transformers": hf_version, "command": args.command,
              "sections": sections, "model_only": [], "skipped": [
                  {"what": s, "why": "not requested (--sections)"} for s in SECTIONS if s not in sections]}

    def write():
        from segformer.weights import atomic_write_bytes

        annotate(result)
        atomic_write_bytes(Path(f"{args.out}.json"), (json.dumps(result, indent=1) + "\n").encode())
        _write_text(Path(f"{args.out}.md"), markdown(result))
        plot(result, Path(f"{args.out}.png"))

    if todo:
        _model(todo, args, log, result, write)
    if "kernels" in sections:
        result["kernels"] = _microbench("kernels_gpu", args, log, size=_square(args))
        write()
    if "mixffn" in sections:
        result["mixffn"] = _microbench("kernels_mixffn", args, log, size=(_square(args),) * 2, tiles=12)
        write()
    if "served" in sections:
        from bench.gpu_served import knee, served

        if not args.served_scenarios:
            args.served_scenarios = ["shm1mb", "shm256mb"] + (["gpu0", "allgpus", "twoservers"]
                                                              if torch.cuda.device_count() > 1 else [])
        result["served"] = {"stamp": _stamp(), **served(args, log)}
        result["served"]["knee"] = knee([r for r in result["served"]["rows"] if r.get("servers", 1) == 1
                                         and r.get("gpus", "0") == "0"])
        write()
    if "video" in sections:
        from bench.gpu_served import video

        result["video"] = {"stamp": _stamp(), **video(args, log)}
        write()
    for key in ("kernels", "mixffn", "served", "video"):
        sec = result.get(key) or {}
        result["skipped"] += [{**s, "what": f"{key}: {s['what']}"} for s in sec.get("skipped") or []]
        if sec.get("error"):
            result["skipped"].append({"what": key, "why": sec["error"], "failed": True})
    write()
    print(markdown(result))
    return 1 if any(s.get("failed") for s in result["skipped"]) else 0


def _model(todo, args, log, result, write) -> None:
    from segformer.weights import get_weights

    from bench.gpu_measure import model_section, random_weights
    from client.policy import InputPolicy

    images = []
    scratch = tempfile.TemporaryDirectory(prefix="bench_gpu.")
    try:
        for i, (model, size, batches) in enumerate(todo):
            if model["weights"] is None:  # no shipped weights: random ones, made once per model
                model["weights"] = random_weights(model["variant"], get_weights(args.weights), Path(scratch.name))
            if args.images:
                images = InputPolicy(tuple(size)).frames(args.images, args.limit)  # as clients send them (fit)
            modes = [] if args.skip_hf_compile else list(args.hf_compile_modes) + (
                ["max-autotune"] if args.hf_max_autotune and i == 0 and "max-autotune" not in args.hf_compile_modes
                else [])
            sec = {"stamp": _stamp(), **model_section(model, size, batches, args, log, images=images, hf_modes=modes)}
            result["model_only"].append(sec)
            result["skipped"] += [{**s, "what": f"model {sec['variant']} {size[0]}x{size[1]}: {s['what']}"}
                                  for s in sec["skipped"]]
            write()  # kept if a later section fails or the call is stopped
    finally:
        scratch.cleanup()


def _square(args) -> int:
    """The first square input size (the microbenchmarks' shapes are B1's stages at that size), else 1024."""
    return next((h for (h, w), _ in args.sizes or [] if h == w), 1024)


def _microbench(module: str, args, log, **options) -> dict:
    """bench.<module>'s measure (kernels_gpu, kernels_mixffn) into a section: its JSON, stamped."""
    import importlib

    sec = {"stamp": _stamp(), "skipped": []}
    with tempfile.TemporaryDirectory(prefix=f"bench_gpu.{module}.") as tmp:
        try:
            importlib.import_module(f"bench.{module}").measure(
                argparse.Namespace(batch=args.kernels_batch, out=Path(tmp) / "k", **options))
            sec.update(json.loads((Path(tmp) / "k.json").read_text()))
        except Exception as exc:  # noqa: BLE001 - recorded; the other sections still run
            sec["skipped"].append({"what": f"bench.{module}", "why": f"{type(exc).__name__}: {exc}", "failed": True})
            log(f"bench.{module} failed: {exc}")
    return sec


def _readme(args) -> int:
    if not args.readme.is_file():
        raise BenchError(f"{args.readme}: no such results file (the GPU run writes it: make bench BENCH_OUT=...)")
    result = json.loads(args.readme.read_text())
    path = args.readme.resolve()
    rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else args.readme.as_posix()
    block = readme_block(result, rel.removesuffix(".json"))
    if args.readme_into:
        _write_text(args.readme_into, readme_into(args.readme_into, rel, block))
        print(f"{args.readme_into}: GPU block filled from {rel}")
    else:
        print(block, end="")
    return 0


def _write_text(path: Path, text: str) -> None:
    from segformer.weights import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


if __name__ == "__main__":
    raise SystemExit(main())
