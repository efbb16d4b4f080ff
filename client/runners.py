"""Runners that turn uint8 RGB batches into label maps, Polygraphy-style: activate / infer / deactivate.

- `TritonRunner`: a model on a Triton server over HTTP or gRPC (tritonclient).
- `OnnxRunner`: a local ONNX file with ONNX Runtime (the reference without a server).
- `TorchRunner`: shipped weights in PyTorch FP32 (the reference of the references).
All take uint8 [N,H,W,3] at the model's input size (any size within a dynamic model's range) and return uint8
labels [N,H,W], or with ``logits=True`` float32 logits [N,K,H,W] from a model that has that output.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np


class RunnerError(RuntimeError):
    """Server down, model unknown, bad response: one line that says what to do."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


SERVER_GONE = "the server is gone (connection refused or closed): restart it with `make serve`"
_GONE = ("connection refused", "failed to connect", "unavailable", "connection reset", "socket closed",
         "remotedisconnected", "broken pipe", "connection aborted", "eof occurred", "connect failed",
         "server disconnected", "econnrefused", "remote end closed")


_PROXY_STATUS = re.compile(r"(?:http2 header with status: |^\[)(50[234])\b")
PROXY_FAILED = {
    "502": "a replica behind the proxy failed during the request (HTTP 502 from the proxy; it sends the next "
           "requests to the others): see `make cluster-status`",
    "503": "no replica behind the proxy is up (HTTP 503 from the proxy): start them (`make cluster`) or see "
           "`make cluster-status`",
    "504": "the replica behind the proxy did not answer in time (HTTP 504 from the proxy)",
    "reset": "the request's stream was reset by the proxy (a replica behind it went away mid-request; it sends "
             "the next requests to the others): see `make cluster-status`",
}


def _not_live(url: str) -> str:
    """Why an HTTP liveness check said no: Triton itself, or a proxy in front of it with no replica up."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/live", timeout=5) as r:
            status, body = r.status, r.read(200)
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read(200)
    except OSError:
        return "Triton is not live"
    if str(status) in PROXY_FAILED and b"<html" in body.lower():
        return PROXY_FAILED[str(status)]
    return f"Triton is not live (HTTP {status})"


def describe_failure(exc: BaseException) -> str:
    """One line for a failed request; a server that went away is said to be gone, not shown as a transport dump,
    and a proxy's 502/503/504 (HAProxy, a Kubernetes ingress) says what happened behind it."""
    text = f"{type(exc).__name__} {exc}".lower()
    proxy = _PROXY_STATUS.search(str(exc))
    if proxy and ("http2 header" in text or "<html" in text):
        return PROXY_FAILED[proxy.group(1)]
    if "rst_stream" in text:
        return PROXY_FAILED["reset"]
    if isinstance(exc, (ConnectionError, BrokenPipeError)) or any(k in text for k in _GONE):
        return SERVER_GONE
    if "deadline" in text or "timed out" in text or "timeout" in text:
        return f"no answer within the timeout ({_first_line(exc)})"
    return _first_line(exc)


@dataclass
class ModelInfo:
    name: str
    size: tuple[int, int]  # H, W
    max_batch: int
    classes: list[str] = field(default_factory=list)
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    size_range: tuple[tuple[int, int], tuple[int, int]] | None = None  # a dynamic-size model's bounds
    has_logits: bool = False
    trained: list[str] | None = None  # classes the weights were trained on, where fewer than `classes`

    def check(self, images: np.ndarray) -> None:
        """RunnerError unless `images` is a uint8 batch this model takes."""
        ok = images.dtype == np.uint8 and images.ndim == 4 and images.shape[3] == 3
        if ok and self.size_range is None:
            ok = images.shape[1:3] == tuple(self.size)
        elif ok:
            (lo_h, lo_w), (hi_h, hi_w) = self.size_range
            ok = lo_h <= images.shape[1] <= hi_h and lo_w <= images.shape[2] <= hi_w
        if not ok:
            want = (f"[N,{self.size[0]},{self.size[1]},3]" if self.size_range is None else
                    f"[N,H,W,3] with {self.size_range[0][0]}x{self.size_range[0][1]} <= HxW <= "
                    f"{self.size_range[1][0]}x{self.size_range[1][1]}")
            raise RunnerError(f"{self.name} takes uint8 {want}; got {images.dtype} {list(images.shape)}")


class _Runner:
    """activate() on entering a `with` block, deactivate() on leaving it."""

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()


class TritonRunner(_Runner):
    def __init__(self, model: str, url: str | None = None, protocol: str = "http", timeout: float = 120.0):
        if protocol not in ("http", "grpc"):
            raise RunnerError(f"unknown protocol {protocol!r}: use http or grpc")
        self.model, self.protocol, self.timeout = model, protocol, timeout
        self.url = url or ("localhost:8000" if protocol == "http" else "localhost:8001")
        for prefix in ("http://", "https://", "grpc://"):
            self.url = self.url.removeprefix(prefix)
        self.client = None
        self.info: ModelInfo | None = None

    def connect(self):
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
            why = describe_failure(exc)
            if why not in PROXY_FAILED.values() and self.protocol == "http":
                why = _not_live(self.url)  # a proxy's error page closes the connection before the client reads it
            if why in PROXY_FAILED.values():
                raise RunnerError(f"{self.url}: {why}") from None
            raise RunnerError(f"cannot reach Triton at {self.url} ({self.protocol}): start it with `make serve` "
                              f"or pass --url ({type(exc).__name__})") from None
        if not live:
            raise RunnerError(f"{self.url}: {_not_live(self.url)}")

    def activate(self) -> ModelInfo:
        self.connect()
        try:
            ready = self.client.is_model_ready(self.model)
        except Exception as exc:  # noqa: BLE001 - a timeout or a broken connection is not "not served"
            raise RunnerError(f"Triton at {self.url} did not say whether {self.model!r} is ready "
                              f"({_first_line(exc)})") from None
        if not ready:
            try:
                served = ", ".join(self.served_models()) or "none"
            except RunnerError as exc:
                served = f"unknown ({exc})"
            raise RunnerError(f"model {self.model!r} is not served at {self.url}; served models: {served}")
        cfg = self.client.get_model_config(self.model)
        cfg = cfg if isinstance(cfg, dict) else json.loads(self._grpc_json(cfg))
        cfg = cfg.get("config", cfg)
        try:
            image_input = next(i for i in cfg.get("input", []) if i.get("name") == "images")
            dims = [int(d) for d in image_input["dims"]]
            outputs = {o["name"] for o in cfg.get("output", [])}
            params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
            if "labels" not in outputs or len(dims) != 3:
                raise KeyError("labels")
        except (StopIteration, KeyError, TypeError, ValueError):
            raise RunnerError(f"model {self.model!r} is not a segmentation model of this project (it needs an "
                              "`images` input [H,W,3] and a `labels` output)") from None
        size_range = json.loads(params["size_range"]) if params.get("size_range") else None
        size = tuple(json.loads(params["opt_size"])) if params.get("opt_size") else (dims[0], dims[1])
        self.info = ModelInfo(self.model, size, int(cfg.get("max_batch_size", 1)) or 1,
                              json.loads(params.get("classes", "[]")),
                              [tuple(c) for c in json.loads(params.get("palette", "[]"))],
                              tuple(map(tuple, size_range)) if size_range else None, "logits" in outputs,
                              json.loads(params["trained_classes"]) if params.get("trained_classes") else None)
        return self.info

    @staticmethod
    def _grpc_json(msg) -> str:
        from google.protobuf.json_format import MessageToJson

        return MessageToJson(msg, preserving_proto_field_name=True)

    def served_models(self) -> list[str]:
        """Names of the loaded models, from the statistics API (the repository index is an operator API that
        `make serve` keeps behind a key); RunnerError when the server cannot list them (e.g. a timeout)."""
        try:
            stats = self.client.get_inference_statistics()
            if not isinstance(stats, dict):
                stats = json.loads(self._grpc_json(stats))
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and transport exceptions
            raise RunnerError(f"Triton at {self.url} did not list its models ({_first_line(exc)})") from None
        return sorted({m["name"] for m in stats.get("model_stats", [])})

    def infer(self, images: np.ndarray, logits: bool = False) -> np.ndarray:
        if self.info is None:
            self.activate()
        self.info.check(images)
        name = "logits" if logits else "labels"
        if logits and not self.info.has_logits:
            raise RunnerError(f"{self.model} has no logits output")
        outs = []
        for i in range(0, len(images), self.info.max_batch):
            chunk = np.ascontiguousarray(images[i:i + self.info.max_batch])
            inp = self._tc.InferInput("images", list(chunk.shape), "UINT8")
            inp.set_data_from_numpy(chunk)
            out = [self._tc.InferRequestedOutput(name)]
            try:
                kwargs = {"timeout": int(self.timeout)} if self.protocol == "http" else \
                    {"client_timeout": self.timeout}
                res = self.client.infer(self.model, [inp], outputs=out, **kwargs)
            except Exception as exc:  # noqa: BLE001 - InferenceServerException and transport errors
                raise RunnerError(f"inference on {self.model} failed: {describe_failure(exc)}") from None
            outs.append(res.as_numpy(name))
        return np.concatenate(outs)

    def deactivate(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class OnnxRunner(_Runner):
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
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None

    def deactivate(self):
        self.session = None


def _local_info(name: str, onnx_path: Path | None, size, weights: str | None) -> ModelInfo:
    """Size/classes/palette for a local model: explicit size, the graph's static dims, config.pbtxt, weights."""
    classes, palette, cfg_size, trained = [], [], None, None
    cfg = onnx_path.parent.parent / "config.pbtxt" if onnx_path else None
    if cfg is not None and cfg.is_file():
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc

        c = text_format.Parse(cfg.read_text(), mc.ModelConfig())
        cfg_size = tuple(int(d) for d in c.input[0].dims[:2])
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
    size = size or cfg_size
    if size is None:
        raise RunnerError(f"{name}: the graph has dynamic height/width; give the input size (--size HxW)")
    return ModelInfo(name, tuple(size), 8, classes, palette, trained=trained)


class TorchRunner(_Runner):
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


def split_urls(url: str | None) -> list[str]:
    """`a:8001,b:8001` -> ['a:8001', 'b:8001'] (empty entries and spaces dropped)."""
    return [u.strip() for u in (url or "").split(",") if u.strip()]


def served_models(url: str | None = None, protocol: str = "http", timeout: float = 30.0) -> list[str]:
    """Names of the models loaded on the server, or on any of `a,b,...` that answers (RunnerError when none does)."""
    urls = split_urls(url) or [None]
    names, errors = set(), []
    for u in urls:
        r = TritonRunner("", u, protocol, timeout)
        try:
            r.connect()
            names |= set(r.served_models())
        except RunnerError as exc:
            errors.append(str(exc))
        finally:
            r.deactivate()
    if len(errors) == len(urls):
        raise RunnerError("; ".join(errors))
    return sorted(names)


def is_local(spec: str) -> bool:
    """`onnx:PATH` and `torch[:WEIGHTS]` run here; any other spec names a model on the server."""
    return spec.startswith("onnx:") or spec == "torch" or spec.startswith("torch:")


def make_runner(spec: str, url: str | None = None, protocol: str = "http", timeout: float = 120.0,
                size: tuple[int, int] | None = None, weights: str | None = None):
    """`NAME` (a model on the server), `onnx:PATH` (local ONNX Runtime) or `torch[:WEIGHTS]` (local PyTorch)."""
    if spec.startswith("onnx:"):
        return OnnxRunner(spec[5:], size, weights=weights)
    if is_local(spec):
        name = spec[6:] or weights
        if not name:
            raise RunnerError("torch reference needs weights: use torch:NAME (e.g. torch:segformer-b1-camvid)")
        return TorchRunner(name, size)
    from client.endpoints import triton_runner

    return triton_runner(spec, url, protocol, timeout)
