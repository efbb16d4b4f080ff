"""INT8 that keeps SegFormer accurate: calibration, per-layer sensitivity and an accuracy-guarded "best" mix.

    python -m build.quantize --weights segformer-b1-camvid --size 1024x1024 --calib DIR --holdout DIR --out DIR

ONNX Runtime's static quantizer writes explicit Q/DQ (per-channel symmetric INT8 weights, symmetric INT8
activations, as TensorRT wants) around MatMul/Conv/Gemm; activation ranges come from --calib images through
the input policy clients send with (client.policy; `fit` by default: letterboxed) (max, percentile or entropy). Sensitivity: every layer group (one attention, one Mix-FFN,
one patch embedding, one decoder projection ...) is quantized alone and its pixel disagreement with FP32 is
measured on held-out images. "best" adds groups from the least sensitive up, measuring the whole model after each
addition, and keeps a group only while the disagreement stays within --budget (0.5 % by default).
Writes int8.onnx (everything quantized: the naive recipe, for contrast), best.onnx and quantize.json.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx

from build.guard import (CalibrationError, Prepared, guard_disagreement, load_batch,  # noqa: F401 (this module's API)
                         measured_on, policy_record)
from client.cli import progress, run as run_cli
from client.policy import InputPolicy
from segformer.errors import OutcomeError

QUANT_OPS = ("MatMul", "Conv", "Gemm")
METHODS = ("minmax", "percentile", "entropy")


class _Reader:
    """ONNX Runtime CalibrationDataReader over a uint8 batch, one image per step, with a progress bar."""

    def __init__(self, images: np.ndarray, desc: str):
        self.images, self.i = images, 0
        self.bar = progress(total=len(images), desc=desc, unit="img")

    def get_next(self):
        if self.i >= len(self.images):
            self.bar.close()
            return None
        self.i += 1
        self.bar.update()
        return {"images": self.images[self.i - 1:self.i]}

    def __len__(self):
        return len(self.images)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    try:
        return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}[name]
    except KeyError:
        raise CalibrationError(f"unknown calibration method {name!r}; choose {', '.join(METHODS)}") from None


def quantize(fp32: Path, out: Path, cache: Path, images: np.ndarray | None = None, method: str = "percentile",
             exclude: list[str] | None = None, include: list[str] | None = None) -> Path:
    """Write a Q/DQ model: calibrates into `cache` on first use (needs `images`), reuses it afterwards."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not cache.is_file() and images is None:
        raise CalibrationError("no calibration ranges cached and no calibration images given")
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": 99.99, "QuantizeBias": False,
             "CalibMovingAverage": method == "minmax"}
    quantize_static(str(fp32), str(out), _Reader(images, f"calibrate ({method})") if images is not None else None,
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANT_OPS), per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_quantize=include,
                    nodes_to_exclude=exclude, calibrate_method=_method(method), extra_options=extra,
                    calibration_cache_path=str(cache))
    return out


def quantizable(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in QUANT_OPS]


def group_of(node_name: str) -> str:
    """Layer group of a node from the exporter's module scope: one attention / Mix-FFN / norm-free layer each.

    `/encoder/stages.1/blocks.0/attn/q/MatMul` -> `encoder.stages.1.blocks.0.attn`; a node outside blocks keeps
    its module (`decode_head.linear_c.2`, `encoder.stages.0.patch_embed`)."""
    parts = [p for p in node_name.split("/") if p][:-1] or [node_name]
    path = ".".join(parts)
    m = re.match(r"(.*?blocks\.\d+\.attn)\.MatMul", path + "." + node_name.rsplit("/", 1)[-1])
    if m:  # the two activation x activation products (scores, weighted values): their own group
        return m.group(1) + ".scores"
    m = re.match(r"(.*?blocks\.\d+\.(?:attn|mlp))", path)
    if m:
        return m.group(1)
    m = re.match(r"(.*?(?:patch_embed|linear_c\.\d+|fuse|classifier))", path)
    return m.group(1) if m else path


def groups(model: onnx.ModelProto) -> OrderedDict[str, list[str]]:
    """Quantizable nodes by layer group, in graph order. A node without a module scope (onnxsim names the
    MatMul+Add it fuses `Gemm_N`) joins the group of the next scoped node: the layer it feeds."""
    out: OrderedDict[str, list[str]] = OrderedDict()
    pending: list[str] = []
    for n in model.graph.node:
        scoped = "/" in n.name
        if n.op_type in QUANT_OPS and not scoped:
            pending.append(n.name)
            continue
        if scoped and (pending or n.op_type in QUANT_OPS):
            g = out.setdefault(group_of(n.name), [])
            g.extend(pending)
            pending = []
            if n.op_type in QUANT_OPS:
                g.append(n.name)
    for name in pending:
        out.setdefault(name, []).append(name)
    return out


def run_labels(path: Path, images: np.ndarray, threads: int = 0) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["labels"], {"images": images[i:i + 1]})[0] for i in range(len(images))])


def disagreement(a: np.ndarray, b: np.ndarray, images: np.ndarray | None = None) -> float:
    """Share of pixels labelled differently, on the labels clients get back for `images` (build.guard: each image's
    frame, mean over frames); without `images`, over the whole arrays."""
    if images is not None:
        return guard_disagreement(a, b, images)
    return float(np.count_nonzero(a != b) / a.size)


def sensitivity(fp32: Path, cache: Path, grouped: dict[str, list[str]], holdout: np.ndarray, ref: np.ndarray,
                work: Path, method: str) -> dict[str, float]:
    """Disagreement with FP32 when only one group is quantized, for every group."""
    result = {}
    for g, nodes in progress(grouped.items(), desc="sensitivity", unit="group"):
        path = quantize(fp32, work / "one.onnx", cache, method=method, include=nodes)
        result[g] = disagreement(run_labels(path, holdout), ref, holdout)
    return result


def greedy_best(order: list[str], budget: float, measure) -> tuple[list[str], list[dict]]:
    """Add groups in `order` (least sensitive first); keep each one only if measure(kept + [g]) <= budget."""
    kept, trace = [], []
    for g in order:
        share = measure(kept + [g])
        ok = share <= budget
        trace.append({"group": g, "disagreement": share, "kept": ok})
        if ok:
            kept.append(g)
    return kept, trace


def repair_to_budget(kept: list[str], sens: dict[str, float], budget: float, measure, log=print
                     ) -> tuple[list[str], float, list[dict]]:
    """Final check at serving size; while over budget, drop the most sensitive kept group and measure again.

    The search runs on a smaller analysis set and size; this makes the shipped variant's number a measurement on
    the final set, never an extrapolation. Returns (kept, measured disagreement, what was dropped)."""
    kept = list(kept)
    measured = measure(kept)
    steps = []
    while measured > budget and kept:
        drop = max(kept, key=lambda g: sens.get(g, 0.0))
        kept.remove(drop)
        measured = measure(kept)
        steps.append({"dropped": drop, "disagreement": measured})
        log(f"  final check over budget: back to FP32 for {drop} -> {measured * 100:.3f} %")
    return kept, measured, steps


class BudgetExceeded(OutcomeError, RuntimeError):
    """The accuracy-guarded variant misses its budget on the final check; nothing is shipped (exit 1)."""

    label = "budget missed"


def check_budget(measured: float, budget: float, what: str = "best") -> None:
    if measured > budget:
        raise BudgetExceeded(f"{what}: {measured * 100:.3f} % of held-out pixels differ from FP32, over the "
                             f"{budget * 100:.2f} % budget; use more held-out images or a lower --margin")


def build_quantized(fp32: Path, out_dir: Path, calib: np.ndarray, holdout: np.ndarray, method: str = "percentile",
                    budget: float = 0.005, margin: float = 0.6, log=print, holdout_full: np.ndarray | None = None,
                    policy: InputPolicy | None = None) -> dict:
    """int8.onnx (all quantized), best.onnx (greedy within budget) and quantize.json in `out_dir`.

    Sensitivity and the greedy search run on `holdout` (may be smaller than serving size, for speed) and aim at
    budget * margin, leaving room for images the search has not seen; the final numbers are measured on
    `holdout_full` (serving size) when given. The report records the input policy that prepared the images
    (`policy`, else the one the batches from load_batch carry)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(fp32))
    grouped = groups(model)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        work, cache = Path(tmp), Path(tmp) / "ranges.json"
        quantize(fp32, work / "int8.onnx", cache, calib, method)
        t_calib = time.perf_counter() - t0
        ref = run_labels(fp32, holdout)
        full = disagreement(run_labels(work / "int8.onnx", holdout), ref, holdout)
        log(f"INT8, everything quantized ({sum(map(len, grouped.values()))} layers in {len(grouped)} groups): "
            f"{full * 100:.3f} % of held-out pixels differ from FP32")
        sens = sensitivity(fp32, cache, grouped, holdout, ref, work, method)
        order = sorted(sens, key=sens.get)

        def measure(chosen):
            nodes = [n for g in chosen for n in grouped[g]]
            path = quantize(fp32, work / "try.onnx", cache, method=method, include=nodes)
            return disagreement(run_labels(path, holdout), ref, holdout)

        kept, trace = greedy_best(order, budget * margin, measure)
        final_set, final_ref = (holdout_full, run_labels(fp32, holdout_full)) if holdout_full is not None \
            else (holdout, ref)
        full_all = disagreement(run_labels(work / "int8.onnx", final_set), final_ref, final_set)

        def measure_final(chosen):
            nodes = [n for g in chosen for n in grouped[g]] or ["-none-"]
            path = quantize(fp32, work / "best.onnx", cache, method=method, include=nodes)
            return disagreement(run_labels(path, final_set), final_ref, final_set)

        kept, best, repair = repair_to_budget(kept, sens, budget, measure_final, log)
        best_nodes = [n for g in kept for n in grouped[g]]
        check_budget(best, budget)
        for name in ("int8.onnx", "best.onnx"):
            (work / name).replace(out_dir / name)
        (out_dir / "ranges.json").write_bytes(cache.read_bytes())
    precision = {g: ("int8" if g in kept else "fp32") for g in grouped}
    report = {"method": method, "budget": budget, "search_target": budget * margin,
              "input_policy": policy_record(calib, holdout_full, policy=policy),
              "measured_on": measured_on(holdout_full if holdout_full is not None else holdout),
              "analysis_size": list(holdout.shape[1:3]), "serving_size": list(calib.shape[1:3]), "calibration_images": len(calib), "holdout_images": len(holdout),
              "groups": len(grouped), "layers": sum(map(len, grouped.values())),
              "int8_all": {"disagreement": full_all, "disagreement_analysis_size": full}, "sensitivity": dict(sorted(sens.items(), key=lambda kv: kv[1])),
              "greedy": trace, "repair": repair, "best": {"disagreement": best, "int8_groups": len(kept),
                                        "int8_layers": len(best_nodes), "precision": precision},
              "seconds": {"calibration": round(t_calib, 1), "total": round(time.perf_counter() - t0, 1)}}
    (out_dir / "quantize.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"best: {len(kept)}/{len(grouped)} groups ({len(best_nodes)} layers) in INT8, {best * 100:.3f} % differ "
        f"(budget {budget * 100:.2f} %)")
    return report


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The options build.quantize and build.quantize_cpu share: model, sizes, input policy, held-out set, budget,
    output."""
    from segformer.config import parse_size

    ap.add_argument("--weights", default="segformer-b1-camvid", help="shipped weights name or path to NAME.json")
    ap.add_argument("--size", type=parse_size, default=(1024, 1024), help="serving input HxW (default 1024x1024)")
    ap.add_argument("--resize", choices=("fit", "stretch"), default="fit",
                    help="how images become the input, as clients send them (client.policy; default fit: "
                         "letterboxed, what clients send by default)")
    ap.add_argument("--holdout", type=Path, required=True, help="held-out image folder for the accuracy guard")
    ap.add_argument("--holdout-count", type=int, default=4, help="held-out images (default 4)")
    ap.add_argument("--budget", type=float, default=0.005, help="max pixel disagreement of best (0.005 = 0.5 %%)")
    ap.add_argument("--margin", type=float, default=0.6, help="search target = budget x margin (default 0.6)")
    ap.add_argument("--analysis-size", type=parse_size, default=(512, 512),
                    help="HxW for sensitivity and search (the final check runs at --size)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")


def policy_of(args) -> InputPolicy:
    """The input policy the command line asks for: --resize at --size."""
    return InputPolicy(tuple(args.size), mode=args.resize)


# Errors of other packages that are not ProjectErrors yet, reported as one `error:` line (exit 2) by the CLIs
LEGACY_ERRORS = (FileNotFoundError, RuntimeError)


def prepare(args) -> tuple[Path, np.ndarray, np.ndarray]:
    """Held-out images (analysis and serving size, prepared by the --resize policy) and the verified FP32 export
    in --out. A missing folder is a CalibrationError before anything is written."""
    from build.export import build_onnx
    from segformer.weights import atomic_write_bytes

    policy = policy_of(args)
    holdout = load_batch(args.holdout, policy.at(args.analysis_size), args.holdout_count, "held-out")
    full = load_batch(args.holdout, policy, args.holdout_count, "held-out")
    data, _ = build_onnx(args.weights, args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = args.out / "fp32.onnx"
    atomic_write_bytes(fp32, data)
    return fp32, holdout, full


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m build.quantize", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--calib", type=Path, required=True, help="calibration image folder")
    ap.add_argument("--calib-count", type=int, default=16, help="calibration images (default 16)")
    ap.add_argument("--method", choices=METHODS, default="percentile", help="calibration method (default percentile)")
    args = ap.parse_args(argv)

    def body():
        calib = load_batch(args.calib, policy_of(args), args.calib_count)
        fp32, holdout, full = prepare(args)
        build_quantized(fp32, args.out, calib, holdout, args.method, args.budget, args.margin, holdout_full=full)

    return run_cli(body, handled=LEGACY_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
