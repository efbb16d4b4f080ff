"""The video pipeline's stages, each in its own threads, with bounded queues between them (client.video drives it).

    decode (1 thread; PyAV's own codec threads)  ->  todo (bounded)
    place + send/wait (--in-flight threads, one connection each; YUV->RGB of a decoded frame happens here too)
                                                  ->  painted (bounded)
    overlay (a pool: palette lookup + blend in uint16, RGB->YUV 4:2:0 for the encoder) -> in-order buffer
    encode (1 thread: libx264 with its own threads) in frame order

A window of frames (a semaphore the decoder takes per frame and the writer gives back per frame written) bounds the
frames anywhere in the pipeline, the out-of-order buffer included, so memory stays flat whatever order answers
come in. The work that matters in every stage (H.264 decode/encode, swscale, PIL resize, numpy on whole frames)
runs without the GIL, so the stages overlap in one process.

`NoModelRunner` answers at once (zero labels of the right shape): what the client pipeline alone can do, no model.
"""
from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np

from client.runners.base import ModelInfo, Runner
from client.visualize import palette_lut

STAGES = ("decode", "place", "send", "overlay", "encode")
STAGE_NAMES = {"decode": "decode", "place": "place", "send": "send/wait", "overlay": "overlay", "encode": "encode"}
POLL_S = 0.1  # how often a blocked stage looks at the stop flag


def overlay_threads_default() -> int:
    """Overlay threads: half the cores, 2 to 8 (a 960x720 frame's overlay and colour conversion take ~4 ms)."""
    return max(2, min(8, (os.cpu_count() or 2) // 2))


def encoder_threads_default() -> int:
    """libx264's threads: the cores, at most 16 (x264's frame threads stop paying beyond that at this size)."""
    return max(1, min(16, os.cpu_count() or 1))


def fast_overlay(image: np.ndarray, labels: np.ndarray, lut: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """client.visualize.overlay in integer arithmetic (within 1 of it per channel): the colours by one table lookup
    (np.take), blended in uint16 fixed point (alpha in 1/256). Every step is a whole-array numpy op (GIL free)."""
    colours = np.take(lut, labels, axis=0)
    a = int(round(alpha * 256))
    acc = np.multiply(image, 256 - a, dtype=np.uint16)
    acc += np.multiply(colours, a, dtype=np.uint16)
    acc += 128
    acc >>= 8
    return acc.astype(np.uint8)


class StageClock:
    """Seconds spent in each stage, summed over the stage's threads (thread-safe)."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def summary(self, frames: int, threads: dict[str, int]) -> dict:
        """Per stage: ms per frame (thread time), its threads, and the fps that stage alone could keep up
        (threads / time per frame): the lowest is the stage that limits."""
        out = {}
        for s in STAGES:
            ms = 1e3 * self.seconds[s] / frames if frames else 0.0
            out[s] = {"ms_per_frame": ms, "threads": threads.get(s, 1),
                      "fps_ceiling": (1e3 * threads.get(s, 1) / ms) if ms > 0 else None}
        return out


def format_stages(stages: dict) -> str:
    """One line: every stage's ms per frame and threads, the limiting one marked."""
    ceilings = {s: v["fps_ceiling"] for s, v in stages.items() if v["fps_ceiling"]}
    slowest = min(ceilings, key=ceilings.get) if ceilings else None
    parts = [f"{STAGE_NAMES[s]} {v['ms_per_frame']:.1f} ms x{v['threads']}" + (" (limit)" if s == slowest else "")
             for s, v in stages.items()]
    return "stages (ms per frame, threads): " + ", ".join(parts)


def put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put unless the pipeline stops first (then False)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            pass
    return False


def get(q: queue.Queue, stop: threading.Event):
    """The next item, or None once the pipeline stops."""
    while not stop.is_set():
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            pass
    return None


def acquire(sem: threading.Semaphore, stop: threading.Event) -> bool:
    while not stop.is_set():
        if sem.acquire(timeout=POLL_S):
            return True
    return False


def to_rgb(frame) -> np.ndarray:
    """A decoded frame as uint8 RGB [H, W, 3]: PyAV frames are converted here (swscale, GIL free), arrays pass."""
    return frame if isinstance(frame, np.ndarray) else frame.to_ndarray(format="rgb24")


class NoModelRunner(Runner):
    """The client pipeline alone, no model: answers every request at once with zero labels of the request's shape
    (checked against the model it stands in for: `size`, `max_batch`, CamVid's classes and palette)."""

    def __init__(self, size: tuple[int, int] = (1024, 1024), max_batch: int = 16, preset: str = "camvid"):
        self.size, self.max_batch, self.preset = tuple(size), max_batch, preset
        self.model = "no model (client pipeline alone)"
        self.info = None

    def activate(self) -> ModelInfo:
        from segformer.config import PRESETS

        p = PRESETS[self.preset]
        self.info = ModelInfo(self.model, self.size, self.max_batch, list(p.classes), [tuple(c) for c in p.palette])
        return self.info

    def infer(self, images: np.ndarray, logits: bool = False) -> np.ndarray:
        self.ensure_active().check(images)
        return np.zeros(images.shape[:3], np.uint8)


class Pipeline:
    """One run of the stages over `source` (client.video.Source) into `writer` (client.video.Writer). run() blocks
    until every frame is written, a frame fails, the source stops or Ctrl-C; then `written`, `sent`, `stopped`,
    `latencies`, `clock`, `max_held` say what happened."""

    def __init__(self, source, runner, policy, writer, palette, in_flight: int, labels: bool = False,
                 overlay_threads: int | None = None, window: int | None = None, on_written=None):
        self.source, self.runner, self.policy, self.writer = source, runner, policy, writer
        self.palette, self.lut, self.labels = palette, palette_lut(palette), labels
        self.in_flight = max(1, in_flight)
        self.overlay_threads = max(1, overlay_threads or overlay_threads_default())
        self.window = window or 2 * self.in_flight + 2 * self.overlay_threads + 8
        self.on_written = on_written or (lambda n: None)
        self.todo: queue.Queue = queue.Queue(maxsize=self.in_flight)  # decoded frames waiting for a sender
        self.painted: queue.Queue = queue.Queue(maxsize=2 * self.overlay_threads)  # answers waiting for overlay
        self.done: dict[int, tuple] = {}  # overlaid frames waiting for their turn to be encoded
        self.cond = threading.Condition()
        self.slots = threading.Semaphore(self.window)  # frames anywhere between decode and encode
        self.stop = threading.Event()
        self.clock = StageClock()
        self.latencies: list[float] = []
        self.sent = self.written = self.max_held = 0
        self.decoded_all = False
        self.end_reason: str | None = None  # why the source ended early (said after its frames are written)
        self.stopped: str | None = None
        self.crash: BaseException | None = None  # a bug in a stage: re-raised by run()
        self._lock = threading.Lock()

    def _say_stopped(self, why: str) -> None:
        with self._lock:
            if self.stopped is None:
                self.stopped = why
        self.stop.set()

    def _guard(self, body):
        def run():
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 - a stage's bug ends the run and is raised by run()
                with self._lock:
                    self.crash = self.crash or exc
                self.stop.set()
                with self.cond:
                    self.cond.notify_all()
        return run

    # -- stages ----------------------------------------------------------------------------------------------
    def _decode(self) -> None:
        from client.preprocess import ImageError

        frames = self.source.frames(raw=True)
        try:
            while acquire(self.slots, self.stop):
                t0 = time.perf_counter()
                try:
                    raw = next(frames)
                except StopIteration:
                    self.slots.release()
                    self.end_reason = self.source.stopped
                    break
                except ImageError as exc:
                    self.slots.release()
                    self.end_reason = f"frame {self.sent}: {exc}"
                    break
                self.clock.add("decode", time.perf_counter() - t0)
                if not put(self.todo, (self.sent, raw), self.stop):
                    break
                with self.cond:
                    self.sent += 1
                    self.max_held = max(self.max_held, self.sent - self.written)
        finally:
            frames.close()
            with self.cond:
                self.decoded_all = True
                self.cond.notify_all()

    def _send(self) -> None:
        from client.runners import RunnerError

        policy, runner = self.policy, self.runner
        try:
            while (item := get(self.todo, self.stop)) is not None:
                i, raw = item
                t0 = time.perf_counter()
                try:
                    image = to_rgb(raw)
                    if policy.mode == "slide":  # several crops per frame: placement and requests in one
                        t1 = time.perf_counter()
                        lab = policy.predict(image, runner)
                        t2 = t3 = time.perf_counter()
                    else:
                        x, p = policy.prepare(image)
                        t1 = time.perf_counter()
                        lab = runner.infer(x[None])[0]
                        t2 = time.perf_counter()
                        lab = policy.restore(lab, p, image.shape[:2])
                        t3 = time.perf_counter()
                    result = (i, image, lab, None)
                    self.clock.add("place", (t1 - t0) + (t3 - t2))
                    self.clock.add("send", t2 - t1)
                except (RunnerError, ValueError) as exc:
                    result = (i, None, None, f"frame {i}: {exc}")
                with self._lock:
                    self.latencies.append(time.perf_counter() - t0)
                if not put(self.painted, result, self.stop):
                    return
        finally:
            runner.release()  # this thread's connection, closed by the thread that made it

    def _paint(self) -> None:
        while (item := get(self.painted, self.stop)) is not None:
            i, image, lab, err = item
            frame = None
            if err is None:
                t0 = time.perf_counter()
                frame = self.writer.frame(fast_overlay(image, lab, self.lut))
                if self.labels:
                    self.writer.save_labels(i, lab, self.palette)
                self.clock.add("overlay", time.perf_counter() - t0)
            with self.cond:
                self.done[i] = (frame, err)
                self.cond.notify_all()

    def _write(self) -> None:
        while True:
            with self.cond:
                while self.written not in self.done:
                    if self.stop.is_set() or (self.decoded_all and self.written >= self.sent):
                        if not self.stop.is_set() and self.end_reason:
                            self._say_stopped(self.end_reason)
                        return
                    self.cond.wait(POLL_S)
                frame, err = self.done.pop(self.written)
            if err is not None:
                self._say_stopped(err)
                return
            t0 = time.perf_counter()
            self.writer.encode(frame)
            self.clock.add("encode", time.perf_counter() - t0)
            with self.cond:
                self.written += 1
            self.slots.release()
            self.on_written(self.written)

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        workers = ([threading.Thread(target=self._guard(self._decode), name="video-decode", daemon=True)]
                   + [threading.Thread(target=self._guard(self._send), name=f"video-send-{k}", daemon=True)
                      for k in range(self.in_flight)]
                   + [threading.Thread(target=self._guard(self._paint), name=f"video-overlay-{k}", daemon=True)
                      for k in range(self.overlay_threads)])
        writer = threading.Thread(target=self._guard(self._write), name="video-encode", daemon=True)
        for t in [*workers, writer]:
            t.start()
        try:
            while writer.is_alive():
                writer.join(POLL_S)
        except KeyboardInterrupt:
            self.stop.set()
            writer.join()
            self._say_stopped(f"interrupted (Ctrl-C) at frame {self.written}")
        finally:
            self.stop.set()  # every frame is written (or the run stopped): the other stages end
            deadline = time.perf_counter() + 2.0
            for t in workers:
                t.join(timeout=max(0.0, deadline - time.perf_counter()))
        if self.crash is not None:
            raise self.crash

    def threads(self) -> dict[str, int]:
        return {"decode": 1, "place": self.in_flight, "send": self.in_flight, "overlay": self.overlay_threads,
                "encode": 1}
