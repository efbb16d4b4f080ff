"""Runners that need no server: a local ONNX file with ONNX Runtime (the reference without a server) and the
shipped weights in PyTorch FP32 (the reference of the references). Size, classes and palette come from the graph,
a config.pbtxt beside it (files inside a model repository) or the named weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from client.runners.base import ModelInfo, Runner, RunnerError
from segformer.errors import first_line



class OnnxRunner(Runner):
    """A local ONNX file run with ONNX Runtime on the CPU. Size, classes and palette come from the graph, a
    config.pbtxt beside it (files inside a model repository) or the named weights."""

    def __init__(self, path, size: tuple[int, int] | None = None, threads: int = 0, weights: str | None = None):
        self.path, self.threads, self.weights = Path(path), threads, weights
        self.size = tuple(size) if size else None
        self.session = None
        self.info: ModelInfo | None = None

    def activate(self) -> ModelInfo:
        import onnxruntime as ort

        if not self.path.is_file():
            raise RunnerError(f"{self.path}: no such ONNX file (build one with `make repo` or build.export)")
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise RunnerError(f"{self.path}: ONNX Runtime cannot load it ({exc})") from None
        self.info = _local_info(f"onnx:{self.path.name}", self.path, self.size, self.weights)
        self.info.has_logits = "logits" in {o.name for o in self.session.get_outputs()}
        return self.info

    def infer(self, images: np.ndarray, logits: bool = False) -> np.ndarray:
        if self.session is None:
            self.activate()
        if logits and not self.info.has_logits:
            raise RunnerError(f"{self.path.name} has no logits output (export it with --logits)")
        try:
            return self.session.run(["logits" if logits else "labels"], {"images": np.ascontiguousarray(images)})[0]
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise RunnerError(f"{self.path.name}: ONNX Runtime failed on {list(images.shape)} "
                              f"({first_line(exc)})") from None

    def deactivate(self):
        self.session = None


def _local_info(name: str, onnx_path: Path | None, size, weights: str | None) -> ModelInfo:
    """Size/classes/palette for a local model: explicit size, the graph's static dims, config.pbtxt, weights."""
    classes, palette, cfg_size, cfg_range, trained = [], [], None, None, None
    cfg = onnx_path.parent.parent / "config.pbtxt" if onnx_path else None
    if cfg is not None and cfg.is_file():
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc

        from client.runners.triton import size_of

        c = text_format.Parse(cfg.read_text(), mc.ModelConfig())
        params = {k: v.string_value for k, v in c.parameters.items()}
        cfg_size, cfg_range = size_of([int(d) for d in c.input[0].dims], params)
        classes = json.loads(c.parameters["classes"].string_value or "[]")
        palette = [tuple(x) for x in json.loads(c.parameters["palette"].string_value or "[]")]
        weights = weights or c.parameters["weights"].string_value or None
        trained = json.loads(c.parameters["trained_classes"].string_value or "null")
    if weights and not classes:
        from segformer.weights import get_weights

        w = get_weights(weights)
        classes, palette, trained = list(w.classes), [tuple(x) for x in w.palette], w.trained_classes
        cfg_size = cfg_size or tuple(w.meta.get("input_size", (1024, 1024)))
    if not classes:
        from segformer.config import CITYSCAPES

        classes, palette = list(CITYSCAPES.classes), list(CITYSCAPES.palette)
    if size is None and onnx_path is not None:
        import onnx

        dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        if dims[1].dim_value and dims[2].dim_value:
            size = (dims[1].dim_value, dims[2].dim_value)
    dynamic = size is None and cfg_range is not None
    size = size or cfg_size
    if size is None:
        raise RunnerError(f"{name}: the graph has dynamic height/width; give the input size (--size HxW)")
    return ModelInfo(name, tuple(size), 8, classes, palette, cfg_range if dynamic else None, trained=trained)


class TorchRunner(Runner):
    """Shipped weights in PyTorch FP32 on the CPU (the reference of the references)."""

    def __init__(self, weights: str, size: tuple[int, int] | None = None):
        self.weights = weights
        self.size = tuple(size) if size else None
        self.pipe = None
        self.info: ModelInfo | None = None

    def activate(self) -> ModelInfo:
        from segformer.model import SegmentationPipeline
        from segformer.weights import get_weights

        from segformer.weights import WeightsError

        try:
            w = get_weights(self.weights)
            model = w.build()
        except (FileNotFoundError, ValueError, WeightsError) as exc:
            raise RunnerError(str(exc).splitlines()[0]) from None
        self.pipe = SegmentationPipeline(model, w.mean, w.std).eval()
        self.info = _local_info(f"torch:{w.name}", None, self.size, self.weights)
        self.info.has_logits = True
        if w.size_range and self.size is None:
            self.info.size_range = w.size_range
        return self.info

    def infer(self, images: np.ndarray, logits: bool = False) -> np.ndarray:
        import torch

        if self.pipe is None:
            self.activate()
        self.pipe.with_logits = logits
        with torch.no_grad():
            out = self.pipe(torch.from_numpy(np.array(images, copy=True)))
        return out[1].numpy() if logits else out.numpy()

    def deactivate(self):
        self.pipe = None
