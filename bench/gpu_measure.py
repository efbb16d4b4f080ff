"""The model-only measurements of `python -m bench.gpu` (needs a CUDA GPU): ours per path, HF eager / compiled.

One *section* is one (model, input size): ours through `segformer.fast.build_fast` per path (a `--paths` name
mapped to build_fast's keywords by `path_kwargs`), CUDA-graph replayed per batch; HF transformers SegFormer of
the same architecture (its own initial weights: speed only) eager and under torch.compile; the label agreement of
each path with the FP32 PyTorch reference on real frames (shipped weights only); optionally the kernel profile.
A model without shipped weights is measured on random-initialised weights (`random_weights`): speed only, labelled
so in the results, no agreement.
"""
from __future__ import annotations

import inspect
import statistics
import sys
import time
import typing
from pathlib import Path

from bench import BenchError

RANDOM_INIT = "random-init (speed only)"
# build_fast's bool keyword of round 2, for a build_fast that has no `mixffn` keyword yet
LEGACY_PATHS = {"fused": {"fused_mixffn": True}, "unfused": {"fused_mixffn": False}}


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


def path_kwargs(name: str | None, build_fast=None) -> dict:
    """build_fast's keywords for a `--paths` name: {} for None (build_fast's own default); {"mixffn": name} where
    build_fast takes `mixffn` (checked against its Literal values or its module's MIXFFN_PATHS); else the round-2 names
    `fused` / `unfused` (fused_mixffn). A name it cannot take is a BenchError before any GPU time is spent."""
    if name is None:
        return {}
    if build_fast is None:
        from segformer.fast import build_fast
    params = inspect.signature(build_fast).parameters
    if "mixffn" in params:
        try:
            hint = typing.get_type_hints(build_fast).get("mixffn")
        except Exception:  # noqa: BLE001 - unresolvable annotations: no Literal to check against
            hint = None
        allowed = [a for a in typing.get_args(hint) if isinstance(a, str)] \
            if typing.get_origin(hint) is typing.Literal else []
        allowed = allowed or list(getattr(sys.modules.get(build_fast.__module__), "MIXFFN_PATHS", ()))
        if allowed and name not in allowed:
            raise BenchError(f"--paths {name}: build_fast's mixffn takes {', '.join(allowed)}")
        return {"mixffn": name}
    if name in LEGACY_PATHS:
        return dict(LEGACY_PATHS[name])
    raise BenchError(f"--paths {name}: this build_fast has no `mixffn` keyword; the paths it takes: "
                     f"{', '.join(LEGACY_PATHS)} (or leave --paths out for its default)")


def random_weights(variant: str, like, directory: Path, seed: int = 0) -> str:
    """A weights entry (path to its .json) for `variant` with random initial weights and `like`'s classes and
    normalisation: for speed rows of models with no shipped weights."""
    import torch

    from segformer.config import get_config
    from segformer.model import SegFormer
    from segformer.weights import save_weights

    torch.manual_seed(seed)
    model = SegFormer(get_config(variant, like.num_classes)).eval()
    meta = {k: like.meta[k] for k in ("classes", "palette", "mean", "std") if k in like.meta}
    meta["note"] = f"{RANDOM_INIT}: torch.manual_seed({seed}), not trained"
    w = save_weights(model, Path(directory), f"segformer-{variant}-random-init", meta)
    return str(w.tensors.with_suffix(".json"))


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


def reference_labels(weights, images, device) -> list:
    """Labels of the FP32 PyTorch reference (TF32 off) on each image, kept on the GPU for every path to compare."""
    import torch

    from segformer.model import SegmentationPipeline

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref = SegmentationPipeline(weights.build().eval(), weights.mean, weights.std).to(device).eval()
        with torch.no_grad():
            out = [ref(torch.from_numpy(img[None]).to(device)).clone() for img in images]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    del ref
    return out


def agreement(seg_runner, ref_labels, images, device) -> dict:
    """Share of pixels where the fast path's labels equal the reference's, overall and on the worst image."""
    import torch

    same, total, per = 0, 0, []
    with torch.no_grad():
        for img, a in zip(images, ref_labels):
            b = seg_runner(torch.from_numpy(img[None]).to(device))
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


def ours_label(path: str | None, mode: str | None) -> str:
    return f"ours ({path or 'default path'}" + (", eager" if mode is None else
                                                 f", compile {mode}" if mode != "default" else "") + ")"


def _row(impl: str, b: int, ms: float, **extra) -> dict:
    return {"impl": impl, "batch": b, "ms_per_batch": ms, "ms_per_img": ms / b, "img_per_s": 1e3 * b / ms, **extra}


def model_section(model: dict, size: tuple[int, int], batches: list[int], args, log, *, images=(),
                  hf_modes=("default",)) -> dict:
    """Every path of ours, then the HF peer, for one model (`model`: variant, weights, shipped) at one size.
    A path or peer that fails is recorded under `skipped` with its error; the others still run."""
    import torch

    from segformer.fast import GraphedSegmenter, build_fast
    from segformer.weights import get_weights

    dev = torch.device("cuda")
    w = get_weights(model["weights"])
    sec = {"variant": model["variant"], "weights": model["weights_name"], "size": list(size), "batches": batches,
           "weights_kind": "shipped" if model["shipped"] else RANDOM_INIT, "rows": [], "agreement": {},
           "compile_and_capture_s": {}, "skipped": []}
    hf_batches = list(args.hf_batches or [max(batches)])
    x_all = torch.randint(0, 256, (max(batches + hf_batches), *size, 3), dtype=torch.uint8, device=dev)
    refs = None
    if images and not model["shipped"]:
        sec["skipped"].append({"what": "agreement", "why": f"{RANDOM_INIT}: agreement only for shipped weights"})
    for path in args.paths:
        for mode in args.compile_modes:
            name = ours_label(path, mode)
            try:
                torch._dynamo.reset()  # a fresh compile per path and section: no recompile limit reached
                t0 = time.perf_counter()
                seg = build_fast(model["weights"], "cuda", compile_mode=mode, **path_kwargs(path))
                runner = GraphedSegmenter(seg, size, tuple(batches))
                sec["compile_and_capture_s"][name] = round(time.perf_counter() - t0, 1)
                log(f"{model['variant']} {size[0]}x{size[1]} {name}: compiled and captured {len(batches)} CUDA graphs "
                    f"in {sec['compile_and_capture_s'][name]:.0f} s")
                for b in batches:
                    ms = cuda_ms(runner, x_all[:b], iters=max(5, 160 // b))
                    sec["rows"].append(_row(name, b, ms, path=path or "default", compile_mode=mode or "none"))
                    log(f"  b{b}: {ms / b:.3f} ms/img")
                if args.profile and "profile" not in sec:
                    sec["profile"] = {"impl": name, **kernel_profile(runner, x_all[:max(batches)])}
                if images and model["shipped"]:
                    refs = refs if refs is not None else reference_labels(w, images, dev)
                    sec["agreement"][name] = agreement(runner, refs, images, dev)
                    log(f"  agreement with FP32 on {len(images)} images: "
                        f"{100 * sec['agreement'][name]['agreement']:.3f} %")
            except Exception as exc:  # noqa: BLE001 - recorded; the other paths and the peer still run
                sec["skipped"].append({"what": name, "why": f"{type(exc).__name__}: {exc}", "failed": True})
                log(f"  {name} failed: {exc}")
            finally:
                runner = seg = None
                torch.cuda.empty_cache()
    refs = None
    _hf_peer(sec, w, x_all, hf_batches, log, hf_modes, dev)
    return sec


def _hf_peer(sec: dict, w, x_all, hf_batches: list[int], log, hf_modes, dev) -> None:
    import torch

    try:
        hf = hf_pipeline(w.config, w.mean, w.std, dev)
    except ImportError:
        sec["skipped"].append({"what": "HF peer", "why": "transformers is not installed"})
        return
    for b in hf_batches:
        try:
            ms = cuda_ms(hf, x_all[:b], iters=max(3, 48 // b))
        except Exception as exc:  # noqa: BLE001 - recorded; the compiled peer still runs
            sec["skipped"].append({"what": f"HF eager fp16 b{b}", "why": f"{type(exc).__name__}: {exc}",
                                   "failed": True})
            continue
        sec["rows"].append(_row("HF eager fp16", b, ms))
        log(f"  HF eager b{b}: {ms / b:.3f} ms/img")
    for mode in hf_modes:
        label = "HF torch.compile fp16" + ("" if mode == "default" else f" ({mode})")
        torch._dynamo.reset()
        hfc = torch.compile(hf, mode=None if mode == "default" else mode)
        for b in hf_batches:
            try:
                t1 = time.perf_counter()
                with torch.no_grad():
                    hfc(x_all[:b])  # compile (and autotune) for this shape, timed separately
                torch.cuda.synchronize()
                secs = round(time.perf_counter() - t1, 1)
                sec["compile_and_capture_s"][f"{label} b{b}"] = secs
                ms = cuda_ms(hfc, x_all[:b], iters=max(3, 48 // b))
                sec["rows"].append(_row(label, b, ms, compile_s=secs))
                log(f"  {label} b{b}: {ms / b:.3f} ms/img (compiled in {secs:.0f} s)")
            except Exception as exc:  # noqa: BLE001 - recorded with the rows measured before it
                sec["skipped"].append({"what": f"{label} b{b}", "why": f"{type(exc).__name__}: {exc}",
                                       "failed": True})
    torch._dynamo.reset()
