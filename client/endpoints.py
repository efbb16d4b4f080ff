"""Several Triton servers behind one runner: `--url a:8001,b:8001`.

Requests go round robin over the servers that answer; a server that has gone away (connection refused or
closed) is dropped, said once on stderr with the servers left, and the request is sent again to the next one, so
nothing is lost while one server is up. A request that a live server refuses (bad input, unknown model) is an
error as with one server. When no server is left, one RunnerError names each and why.
"""
from __future__ import annotations

import sys
import threading

import numpy as np

from client.runners import SERVER_GONE, ModelInfo, RunnerError, TritonRunner, split_urls


def triton_runner(model: str, url: str | None = None, protocol: str = "http", timeout: float = 120.0):
    """A TritonRunner for one address, a MultiRunner for a comma-separated list."""
    urls = split_urls(url)
    if len(urls) > 1:
        return MultiRunner(model, urls, protocol, timeout)
    return TritonRunner(model, urls[0] if urls else None, protocol, timeout)


def _gone(exc: BaseException) -> bool:
    text = str(exc)
    return SERVER_GONE in text or "cannot reach Triton" in text


class MultiRunner:
    def __init__(self, model: str, urls: list[str], protocol: str = "http", timeout: float = 120.0, note=None):
        self.model, self.urls = model, list(urls)
        self.runners = [TritonRunner(model, u, protocol, timeout) for u in urls]
        self.alive: list[TritonRunner] = []
        self.gone: dict[str, str] = {}
        self.info: ModelInfo | None = None
        self._next, self._lock = 0, threading.Lock()
        self.note = note or (lambda text: print(text, file=sys.stderr))
        self.url = ",".join(urls)

    @property
    def client(self):  # the statistics of the first live server (video summary)
        return self.alive[0].client if self.alive else None

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()

    def activate(self) -> ModelInfo:
        for r in self.runners:
            try:
                info = r.activate()
            except RunnerError as exc:
                if not _gone(exc):
                    raise
                self._drop(r, str(exc))
                continue
            if self.info is not None and (info.size, info.classes) != (self.info.size, self.info.classes):
                raise RunnerError(f"{r.url} serves {self.model!r} with another input size or class list than "
                                  f"{self.alive[0].url}: point --url at servers of the same model repository")
            self.info = self.info or info
            self.alive.append(r)
        if not self.alive:
            raise RunnerError(self._none_left())
        return self.info

    def _none_left(self) -> str:
        return "no Triton server left: " + "; ".join(f"{u}: {why}" for u, why in self.gone.items())

    def _drop(self, runner: TritonRunner, why: str) -> None:
        with self._lock:
            if runner in self.alive:
                self.alive.remove(runner)
            if runner.url in self.gone:
                return
            self.gone[runner.url] = why
            left = ", ".join(r.url for r in self.alive) or "none"
        self.note(f"warning: {runner.url} dropped ({why}); continuing on: {left}")

    def served_models(self) -> list[str]:
        return sorted({m for r in self.alive for m in r.served_models()})

    def infer(self, images: np.ndarray, logits: bool = False) -> np.ndarray:
        if self.info is None:
            self.activate()
        while True:
            with self._lock:
                if not self.alive:
                    raise RunnerError(self._none_left())
                runner = self.alive[self._next % len(self.alive)]
                self._next += 1
            try:
                return runner.infer(images, logits)
            except RunnerError as exc:
                if not _gone(exc):
                    raise
                self._drop(runner, str(exc).split(": ", 1)[-1])

    def deactivate(self) -> None:
        for r in self.runners:
            r.deactivate()
