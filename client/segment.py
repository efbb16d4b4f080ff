"""Segment images with a SegFormer served by Triton; write label maps and overlays, print the class table.

    python -m client.segment street.png [more.jpg ...] [--url localhost:8000] [--protocol http|grpc]
                             [--model segformer_b1] [--out DIR] [--resize fit|stretch] [--slide [--stride HxW]]
                             [--payload raw|jpeg|auto]

For each image: decode (any Pillow mode -> RGB), bring it to the model keeping its aspect ratio (`--resize fit`,
the default: scaled into a fixed-size model's input and padded, or sent at its own size, within bounds, to a
dynamic-size model; `--resize stretch` squashes it to the input size instead; `--slide` runs sliding-window
inference over model-size crops, averaging the logits), infer, bring the labels back to the image size
(nearest), write NAME_labels.png (indexed PNG: pixel = class id) and NAME_overlay.png, and print the model version
that answered (Triton's response; it changes when `make reload` swaps in a new one) and the pixel share of every
class found. Video files (and, with --video, folders of frames) are segmented with several requests in
flight into NAME_overlay.mp4 (and with --labels one label PNG per frame): see client.video.
With --payload jpeg each file is sent as it is (100-300 KB instead of a 3 MB frame) to the model's `_jpeg`
ensemble, which decodes and places it on the server with the same placement code; the labels come back with the
placement and are restored exactly as for a raw frame. The served weights' licence is printed first.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from client import cli
from client.policy import InputPolicy
from client.preprocess import ImageError, load_image
from client.placement import Placement, from_output, resize_labels
from client.runners import RunnerError, TritonRunner, triton_runner
from client.visualize import class_table, format_table, overlay, palette_png, save_png


def encoded_labels(runner, data: bytes, image_hw: tuple[int, int]) -> np.ndarray:
    """Labels at the image's size for one encoded file sent as is to a model that takes it (`encoded`): restored
    with the placement the server used (a row's `_jpeg` ensemble), or resized from the model's size where the
    server stretched the image (the GPU row, which says no placement)."""
    labels, placement = runner.infer_encoded(data)
    if placement is None:
        return resize_labels(labels, image_hw)
    ch, cw, ih, iw = placement
    if (ih, iw) != tuple(image_hw):
        raise RunnerError(f"{runner.model} decoded the image as {ih}x{iw}, here it is {image_hw[0]}x{image_hw[1]}")
    return from_output(labels, Placement(labels.shape[:2], (ch, cw)), (ih, iw))


def segment_files(paths: list[Path], runner, out: Path, quiet: bool = False, mode: str = "fit",
                  stride: tuple[int, int] | None = None, payload: str = "raw") -> list[dict]:
    """Segment `paths`; `payload` "jpeg": each file is sent as it is (runner: a model taking `encoded`), else the
    client decodes and places it and sends the raw frame."""
    info = runner.info or runner.activate()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    results = []
    if not quiet:
        print(licence_line(info))
    for path in paths:
        t0 = time.perf_counter()
        image = load_image(path)
        t1 = time.perf_counter()
        policy = InputPolicy.for_model(info, mode, stride)
        if payload == "jpeg":
            data = Path(path).read_bytes()
            labels = encoded_labels(runner, data, image.shape[:2])
            sent = f"{len(data) / 1024:.0f} KiB {Path(path).suffix.lstrip('.').upper() or 'file'}"
        else:
            labels = policy.predict(image, runner)
            shape = policy.place(image.shape[:2]).input_size
            sent = f"{shape[0]}x{shape[1]}"
        t2 = time.perf_counter()
        stem = Path(path).stem
        lab_path, ov_path = out / f"{stem}_labels.png", out / f"{stem}_overlay.png"
        save_png(palette_png(labels, info.palette), lab_path)
        save_png(Image.fromarray(overlay(image, labels, info.palette)), ov_path)
        rows = class_table(labels, info.classes)
        version = getattr(runner, "last_version", None) or info.version  # the model version that answered
        if not quiet:
            print(f"{path}: {image.shape[0]}x{image.shape[1]} (HxW) -> {info.name}"
                  + (f" version {version}" if version else "") + f" {sent} ({mode}; "
                  f"decode {1e3 * (t1 - t0):.0f} ms, inference {1e3 * (t2 - t1):.0f} ms)")
            print(format_table(rows, info.palette, info.trained))
            print(f"wrote {lab_path}\n      {ov_path}")
        results.append({"image": str(path), "labels": lab_path, "overlay": ov_path, "classes": rows,
                        "infer_s": t2 - t1, "version": version})
    return results


PAYLOADS = ("raw", "jpeg", "auto")


def licence_line(info) -> str:
    """The served weights' licence (config parameter `licence`), said loudly when unknown."""
    if info.licence and info.licence != "unknown":
        return f"{info.name}: weights licence: {info.licence}"
    return (f"{info.name}: WARNING: weights licence unknown (the server's model config does not record it; check "
            "it before using the labels)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m client.segment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...), video files or (with "
                    "--video) frame folders; options may come before, between or after them")
    cli.add_server_options(ap)
    cli.add_model_option(ap)
    ap.add_argument("--out", type=Path, default=Path("out"), help="folder for the PNGs (default ./out)")
    ap.add_argument("--resize", choices=("fit", "stretch"), default="fit",
                    help="fit: keep the aspect ratio (pad / dynamic size; default); stretch: squash to the input size")
    ap.add_argument("--payload", choices=PAYLOADS, default="raw", help="raw: decode and place here, send uint8 "
                    "frames (default); jpeg: send each file as it is to the model's `_jpeg` ensemble (or to the model "
                    "itself where it takes `encoded`); auto: jpeg where the server has that, else raw")
    ap.add_argument("--slide", action="store_true", help="sliding-window inference over model-size crops (needs a "
                    "model with a logits output)")
    ap.add_argument("--stride", help="--slide step HxW (default 3/4 of the model's input)")
    ap.add_argument("--video", action="store_true", help="treat a folder as the frames of one video (sorted by "
                    "name, same size); video files (.mp4, .mkv, .avi, .mov, .webm ...) are found by their suffix")
    ap.add_argument("--in-flight", type=int, help="video: requests in flight (default: twice the model's max batch, "
                    "2..16)")
    ap.add_argument("--labels", action="store_true", help="video: also write one indexed label PNG per frame")
    ap.add_argument("--fps", type=float, help="video: frame rate of a frame folder (default 30) or to override")
    ap.add_argument("--shm", choices=("none", "system", "cuda"), default="none", help="video: none: frames and labels in "
                    "the requests (default); system: through POSIX shared memory (a server on this host only); cuda: frames "
                    "into CUDA shared memory for a GPU model on this host (needs PyTorch with CUDA here), labels "
                    "through system shared memory")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_intermixed_args(argv)  # `a.jpg --url X b.jpg` as well as files first
    try:
        from segformer.config import parse_size

        stride = parse_size(args.stride) if args.stride else None
    except ValueError as exc:
        ap.error(str(exc))
    from client.video import is_video

    folders = [p for p in args.images if p.is_dir()]
    if folders and not args.video:
        print(f"error: {folders[0]}: not a file but a folder: pass --video to segment its frames as one video, or "
              f"name its image files (e.g. {folders[0]}/*.jpg)", file=sys.stderr)
        return 2
    if any(is_video(p) or (args.video and p.is_dir()) for p in args.images):
        return cli.run(lambda: _videos(args))
    return cli.run(lambda: _images(args, stride))


def pick_payload(args, runner):
    """(runner, payload) for --payload: the model itself where it takes `encoded`, else its `_jpeg` ensemble when
    served; raw frames for --payload raw (or auto with no ensemble served). RunnerError with the fix otherwise."""
    if isinstance(runner, TritonRunner) and "images" not in runner.inputs and runner.takes_encoded:
        return runner, "jpeg"  # an ensemble named with --model takes files only
    if args.payload == "raw" or not isinstance(runner, TritonRunner):
        if args.payload == "jpeg":
            raise RunnerError("--payload jpeg sends to one server: pass one --url")
        return runner, "raw"
    if args.slide or args.resize != "fit":
        if args.payload == "jpeg":
            raise RunnerError("--payload jpeg: the server places images as `fit`; drop --resize stretch / --slide or "
                              "use --payload raw")
        return runner, "raw"
    if runner.takes_encoded:
        return runner, "jpeg"
    ensemble = TritonRunner(args.model + "_jpeg", runner.url, runner.protocol, runner.timeout)
    try:
        ensemble.activate()
    except RunnerError:
        ensemble.deactivate()
        if args.payload == "auto":
            return runner, "raw"
        raise RunnerError(f"{args.model} takes raw frames and {args.model}_jpeg is not served: build it (`make repo "
                          f"VARIANTS={args.model}_jpeg`) and restart the server, or use --payload raw") from None
    runner.deactivate()
    return ensemble, "jpeg"


def _images(args, stride) -> int:
    if args.shm != "none":
        raise RunnerError(f"--shm {args.shm} is for videos (files, or folders with --video); images go in requests")
    runner = triton_runner(args.model, args.url, args.protocol, args.timeout)
    try:
        for p in args.images:  # fail before contacting the server when a file is unusable
            load_image(p)
        runner.activate()
        runner, payload = pick_payload(args, runner)
        segment_files(args.images, runner, args.out, mode="slide" if args.slide else args.resize, stride=stride,
                      payload=payload)
    finally:
        runner.deactivate()
    return 0


def _videos(args) -> int:
    """Video files and frame folders: one overlay video each (see client.video)."""
    from client.video import VideoError, default_in_flight, format_summary, open_source, segment_video
    from client.video_shm import shm_runner

    for p in args.images:
        src = open_source(p, args.fps)
        runner = (shm_runner(args.shm, args.model, args.url, args.protocol, args.timeout)
                  or triton_runner(args.model, args.url, args.protocol, args.timeout))
        try:
            in_flight = args.in_flight or default_in_flight(runner.activate())
            summary = segment_video(src, runner, args.out, in_flight, labels=args.labels,
                                    mode="slide" if args.slide else args.resize)
        finally:
            runner.deactivate()
        print(format_summary(summary))
        if summary["stopped"]:
            if summary["stopped"].startswith("interrupted"):
                print(f"{summary['stopped']}: the {summary['frames']} frames before it are written", file=sys.stderr)
                return 130
            where = (f"written to {summary['video']}" if summary["frames"] else
                     "no frame was written (no output file left)")
            raise VideoError(f"{p}: {summary['stopped']}; the {summary['frames']} frames before it are {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
