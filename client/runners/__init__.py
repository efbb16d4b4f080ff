"""Runners turn uint8 RGB batches into label maps, Polygraphy-style: activate / infer / deactivate.

- `base`: the Runner contract, ModelInfo, RunnerError and how failures are said.
- `triton`: a model on one Triton server (HTTP or gRPC), connections owned by the thread that uses them.
- `multi`: several servers — `Failover` (one sender's server, moving on when it goes away) and `MultiRunner`.
- `local`: ONNX Runtime and PyTorch here, without a server (the references).
Imports run one way: base <- triton <- multi; base <- local; this file only gathers them.
"""
from __future__ import annotations

from client.cli import split_urls
from client.runners.base import (PROXY_FAILED, SERVER_GONE, ModelInfo, Runner, RunnerError, describe_failure,
                                 is_gone)
from client.runners.local import OnnxRunner, TorchRunner
from client.runners.multi import Failover, MultiRunner, triton_runner
from client.runners.triton import TritonRunner

__all__ = ["PROXY_FAILED", "SERVER_GONE", "Failover", "ModelInfo", "MultiRunner", "OnnxRunner", "Runner",
           "RunnerError", "TorchRunner", "TritonRunner", "describe_failure", "is_gone", "is_local", "make_runner",
           "served_models", "split_urls", "triton_runner"]


def served_models(url: str | None = None, protocol: str = "http", timeout: float = 30.0) -> list[str]:
    """Names of the models loaded on the server, or on any of `a,b,...` that answers (RunnerError when none does)."""
    urls = split_urls(url) or [None]
    names, errors = set(), []
    for u in urls:
        r = TritonRunner("", u, protocol, timeout)
        try:
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
                size: tuple[int, int] | None = None, weights: str | None = None) -> Runner:
    """`NAME` (a model on the server), `onnx:PATH` (local ONNX Runtime) or `torch[:WEIGHTS]` (local PyTorch)."""
    if spec.startswith("onnx:"):
        return OnnxRunner(spec[5:], size, weights=weights)
    if is_local(spec):
        name = spec[6:] or weights
        if not name:
            raise RunnerError("torch reference needs weights: use torch:NAME (e.g. torch:segformer-b1-camvid)")
        return TorchRunner(name, size)
    return triton_runner(spec, url, protocol, timeout)
