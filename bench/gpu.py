"""GPU benchmark of the fast path against Hugging Face SegFormer, model-only and served through Triton.

    python -m bench.gpu [--weights segformer-b1-camvid] [--images DIR] [--served] [--profile] [--out results/bench_gpu]

Model only (uint8 [N,1024,1024,3] on the GPU -> uint8 labels on the GPU, CUDA-event timed, median of repeats):
HF transformers SegFormer eager FP16, the same under torch.compile (default and max-autotune, compile time
reported), and ours (segformer.fast: FP16, folded decoder, fused dwconv+GELU and upsample+argmax kernels,
torch.compile, CUDA graphs), per batch size; --profile adds ours' GPU time per kernel group. HF models have the same
architecture (variant, classes) with their own initial weights: only their speed is compared. Agreement: share
of pixels where our labels equal the FP32 PyTorch reference (TF32 off) on --images, prepared as clients send
them (client.policy, `fit`: letterboxed).
--served: builds the segformer_b1_gpu model directory, starts Triton, and loads it with the project's
multi-process closed-loop generator (loadtest.closed_loop) in the scenarios of bench.gpu_served (JPEG, raw frames
over system / CUDA shared memory, one GPU vs every GPU vs one server per GPU).
Writes <out>.json, <out>.md and <out>.png (one run, every number side by side); --replot redraws from a JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cuda_ms(fn, x, iters: int, repeats: int = 3, warmup: int = 3) -> float:
    """Median ms per call of fn(x) over `repeats` CUDA-event-timed loops of `iters` calls (no autograd)."""
    import torch

    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        torch.cuda.synchronize()
        runs = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn(x)
            end.record()
            torch.cuda.synchronize()
            runs.append(start.elapsed_time(end) / iters)
    return statistics.median(runs)


def hf_pipeline(cfg, mean, std, device):
    """uint8 NHWC -> labels with HF SegformerForSemanticSegmentation in FP16 (the baseline users start from)."""
    import torch
    import torch.nn.functional as F
    import transformers

    hf_cfg = transformers.SegformerConfig(hidden_sizes=list(cfg.widths), depths=list(cfg.depths),
                                          num_attention_heads=list(cfg.heads), sr_ratios=list(cfg.sr_ratios),
                                          decoder_hidden_size=cfg.decoder_width, num_labels=cfg.num_classes)
    model = transformers.SegformerForSemanticSegmentation(hf_cfg).eval().half().to(device)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def run(images):
        x = ((images.permute(0, 3, 1, 2).float() - m) / s).half()
        logits = model(pixel_values=x).logits
        up = F.interpolate(logits, size=images.shape[1:3], mode="bilinear", align_corners=False)
        return up.argmax(1).to(torch.uint8)

    return run


def agreement(seg_runner, weights, images, device) -> dict:
    """Pixel agreement of the fast path with the FP32 PyTorch reference on real images."""
    import torch

    from segformer.model import SegmentationPipeline

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = SegmentationPipeline(weights.build().eval(), weights.mean, weights.std).to(device).eval()
    same, total, per = 0, 0, []
    with torch.no_grad():
        for img in images:
            x = torch.from_numpy(img[None]).to(device)
            a = ref(x)
            b = seg_runner(x)
            eq = int((a == b).sum())
            same, total = same + eq, total + a.numel()
            per.append(eq / a.numel())
    return {"images": len(images), "agreement": same / total, "min_image_agreement": min(per)}


def kernel_profile(runner, x, iters: int = 10) -> dict:
    """GPU time per kernel over `iters` replays (torch.profiler), grouped into what the kernels do."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            runner(x)
        torch.cuda.synchronize()
    per = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            per[e.key] = per.get(e.key, 0.0) + t
    total = sum(per.values()) or 1.0
    groups = {}
    for k, t in per.items():
        groups[_kernel_group(k)] = groups.get(_kernel_group(k), 0.0) + t
    top = sorted(per.items(), key=lambda kv: -kv[1])[:25]
    n = x.shape[0] * iters
    return {"batch": int(x.shape[0]), "us_per_img": total / n,
            "groups": {g: {"us_per_img": t / n, "percent": 100 * t / total}
                       for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top": [{"kernel": k, "us_per_img": t / n, "percent": 100 * t / total} for k, t in top]}


def _kernel_group(name: str) -> str:
    n = name.lower()
    for key, group in (("flash", "attention (SDPA)"), ("fmha", "attention (SDPA)"), ("attention", "attention (SDPA)"),
                       ("dwconv", "depthwise 3x3 (+GELU)"), ("depthwise", "depthwise 3x3 (+GELU)"),
                       ("upsample", "upsample + argmax"), ("gemm", "GEMM (linear)"), ("xmma", "conv / GEMM (cuDNN)"),
                       ("cutlass", "GEMM (linear)"), ("sm90", "GEMM (linear)"), ("conv", "conv / GEMM (cuDNN)"),
                       ("triton_", "fused elementwise / norm (inductor)"), ("memcpy", "copies"), ("copy", "copies")):
        if key in n:
            return group
    return "other"


def model_only(args, log) -> dict:
    import torch

    from segformer.fast import GraphedSegmenter, build_fast
    from segformer.weights import get_weights

    dev = torch.device("cuda")
    w = get_weights(args.weights)
    size = tuple(args.size)
    rows = []
    x_all = torch.randint(0, 256, (max(args.batches), *size, 3), dtype=torch.uint8, device=dev)
    compile_s = {}
    configs = [(mode, fused) for mode in args.compile_modes for fused in args.fused_mixffn]
    for mode, fused in configs:
        name = "ours (fast path" + (", fused Mix-FFN kernel" if fused else "") + \
            (", eager" if mode is None else f", compile {mode}" if mode != "default" else "") + ")"
        t0 = time.perf_counter()
        seg = build_fast(args.weights, "cuda", compile_mode=mode, fused_mixffn=fused)
        runner = GraphedSegmenter(seg, size, tuple(args.batches))
        compile_s[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: compiled and captured {len(args.batches)} CUDA graphs in {compile_s[name]:.0f} s")
        for b in args.batches:
            ms = cuda_ms(runner, x_all[:b], iters=max(5, 160 // b))
            rows.append({"impl": name, "batch": b, "ms_per_batch": ms, "ms_per_img": ms / b,
                         "img_per_s": 1e3 * b / ms})
            log(f"{name} b{b}: {ms / b:.3f} ms/img")
        if args.profile and (mode, fused) == configs[0]:
            profile = kernel_profile(runner, x_all[:max(args.batches)])
            log("profile: " + "; ".join(f"{k['kernel'][:60]} {k['percent']:.1f} %" for k in profile["top"][:8]))
        if (mode, fused) != configs[-1]:
            del runner, seg
            torch.cuda.empty_cache()
    images = []
    if args.images:
        from client.policy import InputPolicy

        images = InputPolicy(tuple(size)).frames(args.images, args.limit)  # as clients send them (fit)
    acc = agreement(runner, w, images, dev) if images else None
    if acc:
        log(f"agreement with FP32 on {acc['images']} images: {100 * acc['agreement']:.3f} %")
    del runner, seg
    torch.cuda.empty_cache()
    cfg = w.build().config
    hf = hf_pipeline(cfg, w.mean, w.std, dev)
    for b in args.hf_batches:
        ms = cuda_ms(hf, x_all[:b], iters=max(3, 48 // b))
        rows.append({"impl": "HF eager fp16", "batch": b, "ms_per_batch": ms, "ms_per_img": ms / b,
                     "img_per_s": 1e3 * b / ms})
        log(f"HF eager b{b}: {ms / b:.3f} ms/img")
    for mode in ([] if args.skip_hf_compile else args.hf_compile_modes):
        torch._dynamo.reset()
        hfc = torch.compile(hf, mode=None if mode == "default" else mode)
        label = "HF torch.compile fp16" + ("" if mode == "default" else f" ({mode})")
        for b in args.hf_batches:
            t1 = time.perf_counter()
            with torch.no_grad():
                hfc(x_all[:b])  # compile (and autotune) for this shape, timed separately
            torch.cuda.synchronize()
            compile_s[f"{label} b{b}"] = round(time.perf_counter() - t1, 1)
            ms = cuda_ms(hfc, x_all[:b], iters=max(3, 48 // b))
            rows.append({"impl": label, "batch": b, "ms_per_batch": ms, "ms_per_img": ms / b,
                         "img_per_s": 1e3 * b / ms, "compile_s": compile_s[f"{label} b{b}"]})
            log(f"{label} b{b}: {ms / b:.3f} ms/img (compiled in {compile_s[f'{label} b{b}']:.0f} s)")
    return {"rows": rows, "agreement": acc, "compile_and_capture_s": compile_s,
            **({"profile": profile} if args.profile else {})}


def plot(result: dict, path: Path) -> None:
    """Model-only ms/img per batch size for each implementation; beside it, when there was a served run, served
    img/s against p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served_rows = (result.get("served") or {}).get("rows") or []
    fig, axes = plt.subplots(1, 2 if served_rows else 1, figsize=(12 if served_rows else 6.5, 4.5), squeeze=False)
    a = axes[0][0]
    impls = dict.fromkeys(r["impl"] for r in result["model_only"]["rows"])
    for impl in impls:
        rows = [r for r in result["model_only"]["rows"] if r["impl"] == impl]
        a.plot([r["batch"] for r in rows], [r["ms_per_img"] for r in rows], "o-", label=impl)
    a.set(xscale="log", xlabel="batch", ylabel="ms per image (lower is better)",
          title=f"model only, {result['device']}")
    ticks = sorted({r["batch"] for r in result["model_only"]["rows"]})
    a.set_xticks(ticks, [str(t) for t in ticks])
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    if served_rows:
        from bench.gpu_served import plot_served

        plot_served(axes[0][1], served_rows)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    md = [f"# GPU benchmark — {result['device']} ({result['date']})", "",
          "## Model only (uint8 in -> uint8 labels, on the GPU)", "",
          "| implementation | batch | ms/img | img/s |", "|---|---:|---:|---:|"]
    for r in result["model_only"]["rows"]:
        md.append(f"| {r['impl']} | {r['batch']} | {r['ms_per_img']:.3f} | {r['img_per_s']:.0f} |")
    acc = result["model_only"].get("agreement")
    if acc:
        md += ["", f"Agreement with the FP32 reference on {acc['images']} real images: "
                   f"**{100 * acc['agreement']:.3f} %** of pixels (worst image {100 * acc['min_image_agreement']:.3f} %)."]
    prof = result["model_only"].get("profile")
    if prof:
        md += ["", f"## Where the time goes (ours, batch {prof['batch']}, torch.profiler, "
                   f"{prof['us_per_img']:.0f} us of GPU time per image)", "",
               "| kernels | us/img | share |", "|---|---:|---:|"]
        md += [f"| {g} | {v['us_per_img']:.1f} | {v['percent']:.1f} % |" for g, v in prof["groups"].items()]
        md += ["", "| top kernels | us/img | share |", "|---|---:|---:|"]
        md += [f"| `{k['kernel'][:90]}` | {k['us_per_img']:.1f} | {k['percent']:.1f} % |" for k in prof["top"][:12]]
    comp = result["model_only"].get("compile_and_capture_s")
    if comp:
        md += ["", "Compile (+ CUDA-graph capture for ours) seconds: "
               + "; ".join(f"{k}: {v:.0f}" for k, v in comp.items()) + "."]
    if result.get("served"):
        md += ["", "## Served through Triton (closed loop, multi-process, gRPC)", "",
               "| scenario | GPUs | servers | payload | in flight | img/s | p50 ms | p99 ms | failures | server queue ms "
               "| compute ms (input / infer / output) | avg batch |",
               "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["served"]["rows"]:
            s = r.get("server") or {}
            md.append(f"| {r.get('scenario', '')} | {r.get('gpus', '0')} | {r.get('servers', 1)} | {r['payload']} | "
                      f"{r['in_flight']} | {r['img_per_s']:.0f} | {r['p50_ms'] or 0:.1f} | "
                      f"{r['p99_ms'] or 0:.1f} | {r['failures']} | {s.get('queue_ms', float('nan')):.2f} | "
                      f"{s.get('compute_ms', float('nan')):.2f}" + (
                          f" ({s['compute_input_ms']:.2f} / {s['compute_infer_ms']:.2f} / {s['compute_output_ms']:.2f})"
                          if "compute_input_ms" in s else "") + f" | {s.get('avg_batch', float('nan')):.1f} |")
        for key, lines in (result["served"].get("stage_timing") or {}).items():
            md += ["", f"Per-stage time in the model ({key}), from the server log:"] + \
                  [f"    {ln}" for ln in lines[-2:]]
        if result["served"].get("error"):
            md += ["", f"Served run failed: {result['served']['error']}"]
        k = result["served"].get("knee")
        if k:
            md += ["", f"Knee on one GPU (p99 <= 2 x p50): {k.get('scenario')}, {k['payload']}, {k['in_flight']} in flight, "
                       f"{k['img_per_s']:.0f} img/s, p50 {k['p50_ms']:.1f} ms, p99 {k['p99_ms']:.1f} ms."]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    import os

    root = Path(__file__).resolve().parent.parent  # torch.compile's caches inside the project
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / ".cache" / "torchinductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / ".cache" / "triton"))
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="segformer-b1-camvid", help="shipped weights name or path to NAME.json")
    ap.add_argument("--size", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"), help="input (default 1024 1024)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="batch sizes of ours")
    ap.add_argument("--hf-batches", type=int, nargs="+", default=[1, 16], help="batch sizes of the HF peer")
    ap.add_argument("--skip-hf-compile", action="store_true", help="HF eager only (no torch.compile of the peer)")
    ap.add_argument("--compile-modes", nargs="+", default=["default"],
                    help="torch.compile modes for ours ('none' = eager; 'max-autotune-no-cudagraphs': our own CUDA "
                         "graphs capture the result)")
    ap.add_argument("--hf-compile-modes", nargs="+", default=["default", "max-autotune"],
                    help="torch.compile modes for the HF peer (max-autotune: its compile time is reported)")
    ap.add_argument("--profile", action="store_true", help="per-kernel GPU time of ours at the largest batch")
    ap.add_argument("--fused-mixffn", type=int, nargs="+", default=[1, 0], choices=(0, 1),
                    help="measure ours without (0) and/or with (1) the fused Mix-FFN kernel; the agreement check "
                         "uses the last (the served configuration by default)")
    ap.add_argument("--images", default="", help="real images for the agreement check")
    ap.add_argument("--limit", type=int, default=16, help="at most this many --images (default 16)")
    ap.add_argument("--served", action="store_true", help="also serve through Triton and load it")
    ap.add_argument("--served-only", action="store_true", help="only the served run")
    ap.add_argument("--served-duration", type=float, default=8.0, help="seconds per served scenario (default 8)")
    ap.add_argument("--served-instances", type=int, default=2, help="model instances per GPU")
    ap.add_argument("--served-scenarios", nargs="+",
                    help="see bench.gpu_served (default: shm1mb shm256mb, and gpu0 allgpus twoservers where there "
                         "are two or more GPUs)")
    ap.add_argument("--served-start-timeout", type=float, default=300.0, help="seconds for Triton to load the model")
    ap.add_argument("--out", type=Path, default=Path("results/bench_gpu"), help="writes OUT.json, OUT.md and OUT.png")
    ap.add_argument("--replot", type=Path, metavar="JSON", help="only redraw <JSON>.png and .md from a results file")
    args = ap.parse_args(argv)
    from client.cli import run as run_cli

    return run_cli(lambda: measure(args))


def measure(args) -> int:
    from bench import BenchError

    if args.replot:
        result = json.loads(args.replot.read_text())
        plot(result, args.replot.with_suffix(".png"))
        args.replot.with_suffix(".md").write_text(markdown(result))
        return 0
    args.compile_modes = [None if m == "none" else m for m in args.compile_modes]
    try:
        import torch
    except ImportError:
        raise BenchError("the GPU benchmark needs PyTorch with CUDA") from None
    if not torch.cuda.is_available():
        raise BenchError("no CUDA GPU here: run `make bench` on a machine with an NVIDIA GPU")

    def log(msg):
        print(msg, flush=True)

    result = {"device": torch.cuda.get_device_name(), "host": platform.node(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "weights": args.weights,
              "size": list(args.size), "model_only": {"rows": []}}
    from segformer.weights import atomic_write_bytes

    def write():
        atomic_write_bytes(Path(f"{args.out}.json"), (json.dumps(result, indent=1) + "\n").encode())
        atomic_write_bytes(Path(f"{args.out}.md"), markdown(result).encode())
        plot(result, Path(f"{args.out}.png"))

    if not args.served_only:
        result["model_only"] = model_only(args, log)
        write()  # kept even if serving fails below
    if args.served or args.served_only:
        from bench.gpu_served import SCENARIOS, knee, served

        if not args.served_scenarios:
            args.served_scenarios = ["shm1mb", "shm256mb"] + (["gpu0", "allgpus", "twoservers"]
                                                              if torch.cuda.device_count() > 1 else [])
        unknown = [n for n in args.served_scenarios if n not in SCENARIOS]
        if unknown:
            raise BenchError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
        result["served"] = served(args, log)
        result["served"]["knee"] = knee([r for r in result["served"]["rows"] if r.get("servers", 1) == 1
                                         and r.get("gpus", "0") == "0"])
        write()
    print(markdown(result))
    return 0 if not result.get("served", {}).get("error") else 1


if __name__ == "__main__":
    raise SystemExit(main())
