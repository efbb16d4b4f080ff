"""Runners that turn uint8 RGB batches into label maps, Polygraphy-style: activate / infer / deactivate.

- `TritonRunner`: a model on a Triton server over HTTP or gRPC (tritonclient).
- `OnnxRunner`: a local ONNX file with ONNX Runtime (the reference without a server).
- `TorchRunner`: shipped weights in PyTorch FP32 (the reference of the references).
All take uint8 [N,H,W,3] at the model's input size and return uint8 labels [N,H,W].
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


class RunnerError(RuntimeError):
    """Server down, model unknown, bad response: one line that says what to do."""


@dataclass
class ModelInfo:
    name: str
    size: tuple[int, int]  # H, W
    max_batch: int
    classes: list[str] = field(default_factory=list)
    palette: list[tuple[int, int, int]] = field(default_factory=list)


class TritonRunner:
    def __init__(self, model: str, url: str | None = None, protocol: str = "http", timeout: float = 120.0):
        if protocol not in ("http", "grpc"):
            raise RunnerError(f"unknown protocol {protocol!r}: use http or grpc")
        self.model, self.protocol, self.timeout = model, protocol, timeout
        self.url = url or ("localhost:8000" if protocol == "http" else "localhost:8001")
        for prefix in ("http://", "https://", "grpc://"):
            self.url = self.url.removeprefix(prefix)
        self.client = None
        self.info: ModelInfo | None = None

    def activate(self) -> ModelInfo:
        if self.protocol == "http":
            import tritonclient.http as tc
        else:
            import tritonclient.grpc as tc
        self._tc = tc
        kwargs = {"network_timeout": self.timeout, "connection_timeout": 10.0} if self.protocol == "http" else {}
        try:
            self.client = tc.InferenceServerClient(self.url, **kwargs)
            live = self.client.is_server_live()
        except Exception as exc:  # noqa: BLE001 - connection errors come in many types
            raise RunnerError(f"cannot reach Triton at {self.url} ({self.protocol}): start it with `make serve` "
                              f"or pass --url ({type(exc).__name__})") from None
        if not live:
            raise RunnerError(f"Triton at {self.url} is not live")
        try:
            ready = self.client.is_model_ready(self.model)
        except Exception:  # noqa: BLE001
            ready = False
        if not ready:
            raise RunnerError(f"model {self.model!r} is not served at {self.url}; served models: "
                              f"{', '.join(self.served_models()) or 'none'}")
        cfg = self.client.get_model_config(self.model)
        cfg = cfg if isinstance(cfg, dict) else json.loads(self._grpc_json(cfg))
        cfg = cfg.get("config", cfg)
        dims = [int(d) for d in cfg["input"][0]["dims"]]
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        self.info = ModelInfo(self.model, (dims[0], dims[1]), int(cfg.get("max_batch_size", 1)) or 1,
                              json.loads(params.get("classes", "[]")),
                              [tuple(c) for c in json.loads(params.get("palette", "[]"))])
        return self.info

    @staticmethod
    def _grpc_json(msg) -> str:
        from google.protobuf.json_format import MessageToJson

        return MessageToJson(msg, preserving_proto_field_name=True)

    def served_models(self) -> list[str]:
        try:
            idx = self.client.get_model_repository_index()
            if not isinstance(idx, list):
                idx = json.loads(self._grpc_json(idx)).get("models", [])
            return sorted(m["name"] for m in idx if m.get("state") == "READY")
        except Exception:  # noqa: BLE001
            return []

    def infer(self, images: np.ndarray) -> np.ndarray:
        if self.info is None:
            self.activate()
        h, w = self.info.size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, 3):
            raise RunnerError(f"{self.model} takes uint8 [N,{h},{w},3]; got {images.dtype} {list(images.shape)}")
        outs = []
        for i in range(0, len(images), self.info.max_batch):
            chunk = np.ascontiguousarray(images[i:i + self.info.max_batch])
            inp = self._tc.InferInput("images", list(chunk.shape), "UINT8")
            inp.set_data_from_numpy(chunk)
            out = [self._tc.InferRequestedOutput("labels")]
            try:
                kwargs = {"timeout": int(self.timeout)} if self.protocol == "http" else \
                    {"client_timeout": self.timeout}
                res = self.client.infer(self.model, [inp], outputs=out, **kwargs)
            except Exception as exc:  # noqa: BLE001 - InferenceServerException and transport errors
                raise RunnerError(f"inference on {self.model} failed: {exc}") from None
            outs.append(res.as_numpy("labels"))
        return np.concatenate(outs)

    def deactivate(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()


class OnnxRunner:
    def __init__(self, path, size: tuple[int, int], threads: int = 0):
        self.path, self.size, self.threads = path, tuple(size), threads
        self.session = None

    def activate(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        return self

    def infer(self, images: np.ndarray) -> np.ndarray:
        if self.session is None:
            self.activate()
        return self.session.run(["labels"], {"images": np.ascontiguousarray(images)})[0]

    def deactivate(self):
        self.session = None


class TorchRunner:
    def __init__(self, weights: str, size: tuple[int, int]):
        self.weights, self.size = weights, tuple(size)
        self.pipe = None

    def activate(self):
        from segformer.model import SegmentationPipeline
        from segformer.weights import get_weights

        w = get_weights(self.weights)
        self.pipe = SegmentationPipeline(w.build(), w.mean, w.std).eval()
        return self

    def infer(self, images: np.ndarray) -> np.ndarray:
        import torch

        if self.pipe is None:
            self.activate()
        with torch.no_grad():
            return self.pipe(torch.from_numpy(np.ascontiguousarray(images))).numpy()

    def deactivate(self):
        self.pipe = None
