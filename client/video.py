"""Video in, video out: segment every frame of a video file (or a folder of frames) with several requests in flight.

    python -m client.segment drive.mp4 [--out out/] [--model segformer_b1] [--in-flight N] [--labels] [--shm system]
    python -m client.segment frames/ --video [--fps 30]

The frames go through client.video_pipeline's stages: PyAV decodes in one thread, --in-flight threads sharing one
runner (each thread its own connection, client.runners.triton; client.video_shm with --shm system) place and send
them so that Triton's dynamic batcher sees full batches, an overlay pool paints them and one writer thread encodes
them in their order however the answers arrive: ``NAME_overlay.mp4`` (the input's size and frame rate; H.264
4:2:0 where the encoder is there, else MPEG-4 Part 2, said once) and with ``--labels`` one indexed PNG per frame
(pixel = class id) in ``NAME_labels/``. A progress bar shows frames and frames per second; the summary gives
frames, end-to-end fps, the server's compute rate, p50/p99 latency per frame and each stage's time. A video that
stops decoding part-way, a server that goes away or Ctrl-C end the run with the frames done so far written and
the output closed (playable), and a message that says which frame it stopped at.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from client.preprocess import ImageError, load_image

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".y4m")
PRESET = "ultrafast"  # libx264's fastest preset: ~3 ms a 960x720 frame per core; CRF 18, 4:2:0 (plays anywhere)
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class VideoError(ImageError):
    """A video or frame folder that cannot be used; the message names the file and the fix."""


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class Source:
    """Frames of a video file or a frame folder: .frames() yields uint8 RGB arrays; .stopped says why it ended early."""

    path: Path
    fps: float
    size: tuple[int, int]  # W, H
    count: int | None
    files: list[Path] = field(default_factory=list)
    stopped: str | None = None

    def frames(self, raw: bool = False):
        """uint8 RGB frames; with `raw`, a video file's frames as PyAV decodes them (client.video_pipeline.to_rgb
        converts them where there is time). Decoded with the codec's own threads (frame and slice)."""
        if self.files:
            for f in self.files:
                image = load_image(f)
                if (image.shape[1], image.shape[0]) != self.size:
                    self.stopped = f"{f.name} is {image.shape[1]}x{image.shape[0]}, not {self.size[0]}x{self.size[1]}"
                    return
                yield image
            return
        import av

        n = 0
        try:
            with av.open(str(self.path)) as box:
                stream = box.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in box.decode(stream):
                    yield frame if raw else frame.to_ndarray(format="rgb24")
                    n += 1
        except (av.FFmpegError, ValueError, OSError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.stopped = f"decoding stopped after frame {n}: {why}"


def open_source(path: Path, fps: float | None = None) -> Source:
    """A Source for a video file or a folder of same-size frames; VideoError with the fix otherwise."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise VideoError(f"{path}: no frames ({', '.join(FRAME_SUFFIXES)}) in this folder")
        first = load_image(files[0])
        return Source(path, fps or 30.0, (first.shape[1], first.shape[0]), len(files), files)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    import av

    try:
        box = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{path}: not a video PyAV can read ({str(exc).splitlines()[0]})") from None
    with box:
        if not box.streams.video:
            raise VideoError(f"{path}: has no video stream (audio or data only)")
        s = box.streams.video[0]
        if s.codec_context is None or not s.codec_context.name:
            raise VideoError(f"{path}: unsupported video codec")
        rate = float(s.average_rate or s.base_rate or 0) or fps or 30.0
        count = s.frames or None
        try:  # decode the first frame now: an unsupported codec or an empty stream is an error before any work
            first = next(box.decode(video=0), None)
        except (av.FFmpegError, ValueError) as exc:
            raise VideoError(f"{path}: cannot decode its video stream ({s.codec_context.name}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        if first is None:
            raise VideoError(f"{path}: the video stream has no frames")
        return Source(path, fps or rate, (first.width, first.height), count)


class Writer:
    """Overlay video (+ optional label PNGs). `frame()` (any thread) turns an overlay into a frame in the encoder's
    pixel format, `encode()` (one thread, frames in index order) writes it, `save_labels()` (any thread) writes
    one label PNG; close() is always safe. libx264 runs with `threads` threads at `preset`, 4:2:0 (playable)."""

    def __init__(self, out: Path, stem: str, size, fps: float, labels: bool, note=print, preset: str = PRESET,
                 threads: int | None = None, thread_type: str = "SLICE"):
        import av

        from client.video_pipeline import encoder_threads_default

        out.mkdir(parents=True, exist_ok=True)
        self.video_path = out / f"{stem}_overlay.mp4"
        self.labels_dir = out / f"{stem}_labels" if labels else None
        if self.labels_dir:
            self.labels_dir.mkdir(exist_ok=True)
        self.box = av.open(str(self.video_path), "w")
        w, h = size
        codec, pix = ("libx264", "yuv420p") if w % 2 == 0 and h % 2 == 0 else ("libx264rgb", "rgb24")
        try:
            self.stream = self.box.add_stream(codec, rate=_fraction(fps))
        except (av.FFmpegError, ValueError):
            codec, pix = "mpeg4", "yuv420p"
            note(f"note: no H.264 encoder in this PyAV build; writing MPEG-4 Part 2 ({self.video_path.name})")
            self.stream = self.box.add_stream(codec, rate=_fraction(fps))
        self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, pix
        self.threads = threads or encoder_threads_default()
        self.stream.codec_context.thread_count = self.threads
        if codec.startswith("libx264"):
            # SLICE (PyAV's default): each frame split over `threads`; FRAME: whole frames in parallel (more CPU
            # per frame; measured both ways on the GPU host: docs/results/bench_gpu_h200_round3/README.md)
            self.stream.codec_context.thread_type = thread_type
            self.stream.options = {"crf": "18", "preset": preset}
        self.codec, self.pix, self.preset, self.written = codec, pix, preset, 0

    def frame(self, overlay: np.ndarray):
        """The overlay as a frame in the encoder's pixel format (swscale's colour conversion runs without the
        GIL: called from the overlay threads)."""
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(overlay), format="rgb24")
        return frame if self.pix == "rgb24" else frame.reformat(format=self.pix)

    def encode(self, frame) -> None:
        for packet in self.stream.encode(frame):
            self.box.mux(packet)
        self.written += 1

    def write(self, overlay: np.ndarray, labels: np.ndarray, palette) -> None:
        """One frame, in order, in the calling thread (overlay frame and label PNG)."""
        if self.labels_dir is not None:
            self.save_labels(self.written, labels, palette)
        self.encode(self.frame(overlay))

    def save_labels(self, index: int, labels: np.ndarray, palette) -> None:
        from client.visualize import palette_png, save_png

        save_png(palette_png(labels, palette), self.labels_dir / f"{index:06d}.png")

    def trim_labels(self, keep: int) -> None:
        """Remove label PNGs of frames past the first `keep` (made ahead of a run that stopped before them)."""
        if self.labels_dir is not None and self.labels_dir.is_dir():
            for f in self.labels_dir.glob("[0-9]*.png"):
                if f.stem.isdigit() and int(f.stem) >= keep:
                    f.unlink(missing_ok=True)

    def discard(self) -> None:
        """Close and remove the outputs (a run that wrote no frame leaves no file behind)."""
        self.close()
        self.video_path.unlink(missing_ok=True)
        self.trim_labels(0)
        if self.labels_dir is not None and self.labels_dir.is_dir() and not any(self.labels_dir.iterdir()):
            self.labels_dir.rmdir()

    def close(self) -> None:
        if self.box is None:
            return
        try:
            for packet in self.stream.encode():
                self.box.mux(packet)
        finally:
            self.box.close()
            self.box = None


def _fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def segment_video(source: Source, runner, out: Path, in_flight: int, labels: bool = False,
                  mode: str = "fit", progress: bool = True, preset: str = PRESET, overlay_threads: int | None = None,
                  encoder_threads: int | None = None, window: int | None = None,
                  encoder_thread_type: str = "SLICE") -> dict:
    """Segment every frame through the staged pipeline (client.video_pipeline): decode, `in_flight` sender threads
    sharing `runner` (a client.runners Runner: each thread gets its own connection), an overlay pool and an
    encoder thread writing the outputs in frame order. Returns the summary; raises nothing for a partial run
    (summary['stopped'] says why)."""
    from client.cli import progress as progress_bar
    from client.policy import InputPolicy
    from client.video_pipeline import Pipeline

    info = runner.ensure_active()
    policy = InputPolicy.for_model(info, mode)
    writer = Writer(out, source.path.stem if source.path.is_file() else source.path.name, source.size, source.fps,
                    labels, note=lambda m: print(m, file=sys.stderr), preset=preset, threads=encoder_threads,
                    thread_type=encoder_thread_type)
    stats0 = _server_stats(runner)
    bar = progress_bar(total=source.count, unit="frame", desc=source.path.name, disable=not progress)
    t_start = time.perf_counter()

    def written(n: int) -> None:
        bar.update(1)
        bar.set_postfix(fps=f"{n / (time.perf_counter() - t_start):.1f}")

    pipe = Pipeline(source, runner, policy, writer, info.palette, in_flight, labels, overlay_threads, window,
                    on_written=written)
    try:
        pipe.run()
    finally:
        writer.close()
        bar.close()
        writer.trim_labels(pipe.written)
    wall = time.perf_counter() - t_start
    stats1 = _server_stats(runner)
    next_out = pipe.written
    if next_out == 0:  # nothing written: no empty video left behind
        writer.discard()
    lat = np.array(pipe.latencies[: max(1, next_out)]) * 1e3
    served = None
    if stats0 and stats1 and stats1[1] > stats0[1]:  # what the model could do if it never waited for frames
        served = (stats1[0] - stats0[0]) / (stats1[1] - stats0[1])
    return {"source": str(source.path), "frames": next_out, "sent": pipe.sent, "fps": source.fps,
            "size": list(source.size), "in_flight": pipe.in_flight, "wall_s": wall,
            "fps_end_to_end": next_out / wall if wall > 0 else 0.0, "server_compute_fps": served,
            "p50_ms": float(np.percentile(lat, 50)) if next_out else None,
            "p99_ms": float(np.percentile(lat, 99)) if next_out else None,
            "video": str(writer.video_path) if next_out else None, "codec": writer.codec,
            "labels": str(writer.labels_dir) if writer.labels_dir else None, "stopped": pipe.stopped,
            "stages": pipe.clock.summary(next_out, pipe.threads()), "window": pipe.window,
            "max_frames_held": pipe.max_held, "overlay_threads": pipe.overlay_threads,
            "encoder": {"codec": writer.codec, "preset": writer.preset, "threads": writer.threads},
            "transport": getattr(runner, "transport", None) or "wire"}


def _server_stats(runner) -> tuple[int, float] | None:
    """(images inferred, seconds the model spent computing) for the runner's model from Triton's statistics API,
    or None. Triton adds a batch's compute time to each request in it, so the batches' time is the per-request
    average times the number of executions."""
    try:
        s = runner.statistics() if hasattr(runner, "statistics") else {}
        m = s["model_stats"][0]
        compute = m.get("inference_stats", {}).get("compute_infer", {})  # absent until the first request
        requests = int(compute.get("count", 0))
        seconds = int(compute.get("ns", 0)) / 1e9 / requests * int(m.get("execution_count", 0)) if requests else 0.0
        return int(m.get("inference_count", 0)), seconds
    except Exception:  # noqa: BLE001 - statistics are optional in the summary
        return None


def default_in_flight(info) -> int:
    """Enough requests in flight to fill the model's preferred batch twice over (at least 2, at most 16)."""
    return int(min(16, max(2, 2 * max(1, info.max_batch))))


def format_summary(s: dict) -> str:
    from client.video_pipeline import format_stages

    line = (f"{s['source']}: {s['frames']} frames {s['size'][0]}x{s['size'][1]} at {s['fps']:.2f} fps, "
            f"{s['fps_end_to_end']:.2f} fps end to end ({s['in_flight']} in flight"
            + (f", {s['transport']})" if s.get("transport", "wire") != "wire" else ")"))
    if s["server_compute_fps"]:
        line += f", the model computes {s['server_compute_fps']:.1f} img/s (Triton's statistics)"
    if s["p50_ms"] is not None:
        line += f"; latency per frame p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms"
    if s["video"]:
        line += f"\n{format_stages(s['stages'])}" if s.get("stages") and s["frames"] else ""
        line += f"\nwrote {s['video']} ({s['codec']})" + (f" and {s['labels']}/" if s["labels"] else "")
    return line


def save_frames(video: Path, folder: Path) -> list[Path]:
    """Every frame of `video` as PNG in `folder` (000000.png, ...): the frames exactly as the client decodes them."""
    folder.mkdir(parents=True, exist_ok=True)
    src = open_source(video)
    out = []
    for i, frame in enumerate(src.frames()):
        out.append(folder / f"{i:06d}.png")
        Image.fromarray(frame).save(out[-1])
    return out
