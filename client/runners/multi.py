"""Several Triton servers: `--url a:8001,b:8001`. Fail-over is written here once.

- `Failover`: one sender's current server among several. It sticks to its server; when that one goes away (the
  failed request is the caller's to count), it moves on to the next that answers, saying so once; when none
  answers it pauses briefly and the next request looks again. Used by the locust user, the soak sender and the
  closed-loop generator's threads, each with its own way to connect (a runner, a client with shared-memory
  regions registered ...).
- `MultiRunner`: a Runner whose requests go round robin over the servers that answer; a request whose server went
  away is sent again to the next, so nothing is lost while one server is up; when none is left, one RunnerError
  names each and why.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable

import numpy as np

from client.cli import split_urls
from client.runners.base import ModelInfo, Runner, RunnerError, is_gone
from client.runners.triton import TritonRunner
from segformer.errors import first_line


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


class Failover:
    """The server one sender uses now, of `urls`, starting at `first`: `connect(url)` makes what the sender needs
    (raising when that server does not answer), `close(thing)` lets it go. `current`/`url` are None while no
    server answers."""

    def __init__(self, urls: list[str], connect: Callable, close: Callable | None = None, first: int = 0,
                 note: Callable[[str], None] | None = None, pause: float = 0.2):
        self.urls, self._connect, self._close = list(urls), connect, close or (lambda thing: None)
        self.k, self.note, self.pause = first, note, pause
        self.current, self.url = None, None

    @property
    def several(self) -> bool:
        return len(self.urls) > 1

    def start(self) -> list[str]:
        """Connect to the first server from the current position that answers; returns why each one skipped was
        skipped (all of them when none answers: then `current` stays None)."""
        problems = []
        for _ in range(len(self.urls)):
            url = self.urls[self.k % len(self.urls)]
            try:
                self.current, self.url = self._connect(url), url
                return problems
            except Exception as exc:  # noqa: BLE001 - RunnerError, transport errors: one line each
                problems.append(f"{url}: {first_line(exc)}" if self.several else first_line(exc))
                self.k += 1
        self.current, self.url = None, None
        return problems

    def label(self, message: str) -> str:
        """A failure message, with the server's address when there are several."""
        return f"{self.url}: {message}" if self.several and self.url else message

    def failed(self, message: str) -> bool:
        """After a failed request: if its server went away and there are others, move on to the next that answers
        (pausing briefly when none does). Returns whether the sender moved."""
        if not (self.several and is_gone(message)):
            return False
        left = self.url
        self.stop()
        self.k += 1
        self.start()
        if self.current is None:
            time.sleep(self.pause)
        elif self.note:
            self.note(f"warning: {left} is gone; continuing on {self.url}")
        return True

    def ensure(self) -> bool:
        """Before a request: look again for a server when none answered last time. Whether one is there."""
        if self.current is None:
            self.start()
        return self.current is not None

    def stop(self) -> None:
        if self.current is not None:
            try:
                self._close(self.current)
            except Exception:  # noqa: BLE001 - letting go of a server that is gone
                pass
        self.current, self.url = None, None


class MultiRunner(Runner):
    def __init__(self, model: str, urls: list[str], protocol: str = "http", timeout: float = 120.0, note=None):
        self.model, self.urls, self.protocol = model, list(urls), protocol
        self.runners = [TritonRunner(model, u, protocol, timeout) for u in urls]
        self.alive: list[TritonRunner] = []
        self.gone: dict[str, str] = {}
        self.info: ModelInfo | None = None
        self._next, self._lock = 0, threading.Lock()
        self.note = note or _stderr
        self.url = ",".join(urls)

    def activate(self) -> ModelInfo:
        for r in self.runners:
            try:
                info = r.activate()
            except RunnerError as exc:
                if not is_gone(str(exc)):
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

    def statistics(self) -> dict:
        return self.alive[0].statistics() if self.alive else {}

    def infer(self, images: np.ndarray, logits: bool = False) -> np.ndarray:
        self.ensure_active()
        while True:
            with self._lock:
                if not self.alive:
                    raise RunnerError(self._none_left())
                runner = self.alive[self._next % len(self.alive)]
                self._next += 1
            try:
                return runner.infer(images, logits)
            except RunnerError as exc:
                if not is_gone(str(exc)):
                    raise
                self._drop(runner, str(exc).split(": ", 1)[-1])

    def release(self) -> None:
        for r in self.runners:
            r.release()

    def deactivate(self) -> None:
        for r in self.runners:
            r.deactivate()


def triton_runner(model: str, url: str | None = None, protocol: str = "http", timeout: float = 120.0) -> Runner:
    """A TritonRunner for one address, a MultiRunner for a comma-separated list."""
    urls = split_urls(url)
    if len(urls) > 1:
        return MultiRunner(model, urls, protocol, timeout)
    return TritonRunner(model, urls[0] if urls else None, protocol, timeout)
