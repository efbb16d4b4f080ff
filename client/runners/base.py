"""The runner contract, Polygraphy-style: `activate()` -> ModelInfo, `infer(uint8 [N,H,W,3]) -> labels [N,H,W]`
(or float logits [N,K,H,W] with ``logits=True``), `deactivate()`; a `with` block does the first and last.

Every runner (a model on a Triton server, several servers, ONNX Runtime or PyTorch here) is a `Runner`; failures
are `RunnerError`, one line that says what to do. A runner may be used from several threads at once: whatever
it holds per connection belongs to the thread that uses it (see TritonRunner).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from segformer.errors import ProjectError, first_line


class RunnerError(ProjectError, RuntimeError):
    """Server down, model unknown, bad response: one line that says what to do. `reason` is the failure without
    the request's context (what a load generator counts)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


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


def describe_failure(exc: BaseException) -> str:
    """One line for a failed request; a server that went away is said to be gone, not shown as a transport dump,
    and a proxy's 502/503/504 (HAProxy, a Kubernetes ingress) says what happened behind it. A RunnerError is
    already said: its reason."""
    if isinstance(exc, RunnerError):
        return exc.reason
    text = f"{type(exc).__name__} {exc}".lower()
    proxy = _PROXY_STATUS.search(str(exc))
    if proxy and ("http2 header" in text or "<html" in text):
        return PROXY_FAILED[proxy.group(1)]
    if "rst_stream" in text:
        return PROXY_FAILED["reset"]
    if isinstance(exc, (ConnectionError, BrokenPipeError)) or any(k in text for k in _GONE):
        return SERVER_GONE
    if "deadline" in text or "timed out" in text or "timeout" in text:
        return f"no answer within the timeout ({first_line(exc)})"
    return first_line(exc)


def is_gone(message: str) -> bool:
    """Whether a failure message says the server went away (so another server may take the request)."""
    return SERVER_GONE in message or "cannot reach Triton" in message


@dataclass
class ModelInfo:
    name: str
    size: tuple[int, int]  # H, W: the fixed input, or the optimum of a dynamic range
    max_batch: int
    classes: list[str] = field(default_factory=list)
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    size_range: tuple[tuple[int, int], tuple[int, int]] | None = None  # a dynamic-size model's bounds
    has_logits: bool = False
    trained: list[str] | None = None  # classes the weights were trained on, where fewer than `classes`
    version: str | None = None  # the model version that answered (Triton)
    payload: str = "images"  # what a request carries: raw frames ("images") or one encoded file ("encoded")
    licence: str | None = None

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


class Runner:
    """The base of every runner: activate / infer / deactivate, and a `with` block around them."""

    info: ModelInfo | None = None

    def activate(self) -> ModelInfo:
        raise NotImplementedError

    def infer(self, images: np.ndarray, logits: bool = False) -> np.ndarray:
        raise NotImplementedError

    def deactivate(self) -> None:
        pass

    def release(self) -> None:
        """Let go of what the calling thread holds (a worker thread calls it when it is done); default: nothing."""

    def ensure_active(self) -> ModelInfo:
        return self.info or self.activate()

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()
