"""Export a SegFormer to ONNX with preprocessing and postprocessing inside the graph, then verify it.

    python -m build.export --weights segformer-b1-camvid --size 1024x1024 --out model.onnx

Graph: ``images`` uint8 [N,H,W,3] (RGB) -> ``labels`` uint8 [N,H,W] (and optionally ``logits`` float32
[N,C,H,W]). Batch, height and width are dynamic. The decoder is exported folded
(`segformer.model.FoldedAllMLPDecoder`: exact; no 4 x 256-channel concat and fuse conv at 1/4 resolution, 1.16x
faster for B1 1024² FP32 on ONNX Runtime, CPU); the check below compares against the unfolded PyTorch model.
Opset 17 keeps every LayerNorm a single LayerNormalization node.
The export is simplified with onnxsim when it is installed and checked against PyTorch with ONNX Runtime:
label agreement under --min-agreement (99.99 % by default) fails the export, and nothing is written.
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch

from client.cli import run
from client.preprocess import sample_images
from segformer.checkpoints import CheckpointError
from segformer.errors import ProjectError
from segformer.model import SegmentationPipeline
from segformer.weights import WeightsError, atomic_write_bytes as atomic_write, get_weights

OPSET = 17


class ExportMismatch(ProjectError, RuntimeError):
    """The exported graph's labels disagree with PyTorch's beyond the bound; nothing was written."""


def export_onnx(pipeline: SegmentationPipeline, size: tuple[int, int], with_logits: bool = False) -> bytes:
    """Trace the pipeline to ONNX bytes (TorchScript exporter, opset 17, dynamic N/H/W)."""
    pipeline = pipeline.eval()
    pipeline.with_logits = with_logits
    dummy = torch.zeros((1, *size, 3), dtype=torch.uint8)
    outputs = ["labels", "logits"] if with_logits else ["labels"]
    axes = {"images": {0: "N", 1: "H", 2: "W"}, "labels": {0: "N", 1: "H", 2: "W"}}
    if with_logits:
        axes["logits"] = {0: "N", 2: "H", 3: "W"}
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(pipeline, (dummy,), buf, input_names=["images"], output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return buf.getvalue()


def simplify(model_bytes: bytes) -> tuple[bytes, str]:
    """onnxsim when available (dynamic shapes kept); returns (bytes, what was done)."""
    import onnx

    try:
        from onnxsim import simplify as onnxsim_simplify
    except ImportError:
        return model_bytes, "onnxsim not installed: graph left as exported"
    model = onnx.load_from_string(model_bytes)
    simplified, ok = onnxsim_simplify(model)
    if not ok:
        return model_bytes, "onnxsim could not validate its result: graph left as exported"
    return simplified.SerializeToString(), f"onnxsim: {len(model.graph.node)} -> {len(simplified.graph.node)} nodes"


def verify(model_bytes: bytes, pipeline: SegmentationPipeline, images: np.ndarray) -> float:
    """Label agreement (0..1) between ONNX Runtime and PyTorch on the same uint8 images."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    onnx_labels = sess.run(["labels"], {"images": images})[0]
    pipeline.with_logits = False
    with torch.no_grad():
        torch_labels = pipeline(torch.from_numpy(images)).numpy()
    return float((onnx_labels == torch_labels).mean())


def _verify_batch(size, n: int, images=None):
    """Real images prepared as clients send them (the input policy), else synthetic frames."""
    if images:
        from client.policy import InputPolicy

        return InputPolicy(tuple(size)).batch(list(images)[:n])
    return sample_images(tuple(size), n)


def build_onnx(weights: str, size: tuple[int, int], with_logits: bool = False, min_agreement: float = 0.9999,
               verify_images: list[Path] | None = None, log=print, also_sizes=()) -> tuple[bytes, dict]:
    """Export + simplify + verify (at `size`, and at each of `also_sizes` for a dynamic-size row); returns the
    ONNX bytes and a report dict. Raises when verification fails."""
    w = get_weights(weights)
    pipeline = SegmentationPipeline(w.build(), w.mean, w.std)  # the reference the export is verified against
    t0 = time.perf_counter()
    raw = export_onnx(SegmentationPipeline(pipeline.model, w.mean, w.std, fold_decoder=True), size, with_logits)
    t_export = time.perf_counter() - t0
    data, how = simplify(raw)
    t_simplify = time.perf_counter() - t0 - t_export
    imgs = _verify_batch(size, 2, verify_images)
    agreement = verify(data, pipeline, imgs)
    per_size = {f"{size[0]}x{size[1]}": agreement}
    for other in also_sizes:
        per_size[f"{other[0]}x{other[1]}"] = verify(data, pipeline, _verify_batch(tuple(other), 1, verify_images))
    agreement = min(per_size.values())
    t_verify = time.perf_counter() - t0 - t_export - t_simplify
    report = {"weights": w.name, "weights_sha256": w.meta["sha256"], "size": list(size), "opset": OPSET,
              "with_logits": with_logits, "decoder": "folded", "simplify": how, "agreement": agreement,
              "agreement_by_size": per_size,
              "verify_images": [str(p) for p in verify_images[:2]] if verify_images else "synthetic",
              "seconds": {"export": round(t_export, 2), "simplify": round(t_simplify, 2),
                          "verify": round(t_verify, 2)}}
    log(f"ONNX {w.name} {size[0]}x{size[1]}: {how}; ONNX Runtime vs PyTorch label agreement "
        f"{agreement * 100:.4f} % on {len(imgs)} image(s)" + (f" (sizes {', '.join(per_size)})" if also_sizes else ""))
    if agreement < min_agreement:
        raise ExportMismatch(f"ONNX export of {w.name} disagrees with PyTorch: {agreement * 100:.4f} % label "
                           f"agreement < {min_agreement * 100:.2f} %; nothing was written")
    return data, report


def main(argv=None) -> int:
    from segformer.config import parse_size

    ap = argparse.ArgumentParser(prog="python -m build.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="segformer-b1-camvid", help="shipped weights name or path to NAME.json")
    ap.add_argument("--size", type=parse_size, default=(1024, 1024), help="HxW used for tracing and verification")
    ap.add_argument("--logits", action="store_true", help="also output float32 logits [N,C,H,W]")
    ap.add_argument("--verify-images", type=Path, nargs="*", help="real images for the PyTorch comparison")
    ap.add_argument("--min-agreement", type=float, default=0.9999)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    def body():
        data, _ = build_onnx(args.weights, args.size, args.logits, args.min_agreement, args.verify_images)
        atomic_write(args.out, data)
        print(f"wrote {args.out} ({len(data) / 1e6:.1f} MB)")
        return 0

    return run(body, handled=(WeightsError, CheckpointError, FileNotFoundError))


if __name__ == "__main__":
    raise SystemExit(main())
