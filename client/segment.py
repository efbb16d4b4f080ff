"""Segment images with a SegFormer served by Triton; write label maps and overlays, print the class table.

    python -m client.segment street.png [more.jpg ...] [--url localhost:8000] [--protocol http|grpc]
                             [--model segformer_b1] [--out DIR] [--resize fit|stretch] [--slide [--stride HxW]]

For each image: decode (any Pillow mode -> RGB), bring it to the model keeping its aspect ratio (`--resize fit`,
the default: scaled into a fixed-size model's input and padded, or sent at its own size, within bounds, to a
dynamic-size model; `--resize stretch` squashes it to the input size instead; `--slide` runs sliding-window
inference over model-size crops, averaging the logits), infer, bring the labels back to the image size
(nearest), write NAME_labels.png (indexed PNG: pixel = class id) and NAME_overlay.png, and print the pixel share
of every class found. Video files (and, with --video, folders of frames) are segmented with several requests in
flight into NAME_overlay.mp4 (and with --labels one label PNG per frame): see client.video.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PIL import Image

from client.policy import place, predict
from client.preprocess import ImageError, load_image
from client.endpoints import triton_runner
from client.runners import RunnerError
from client.visualize import class_table, format_table, overlay, palette_png, save_png


def segment_files(paths: list[Path], runner, out: Path, quiet: bool = False, mode: str = "fit",
                  stride: tuple[int, int] | None = None) -> list[dict]:
    info = runner.info or runner.activate()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    results = []
    for path in paths:
        t0 = time.perf_counter()
        image = load_image(path)
        t1 = time.perf_counter()
        labels = predict(image, runner, mode, stride)
        t2 = time.perf_counter()
        sent = place(image.shape[:2], info.size, info.size_range, mode).input_size if mode != "slide" else info.size
        stem = Path(path).stem
        lab_path, ov_path = out / f"{stem}_labels.png", out / f"{stem}_overlay.png"
        save_png(palette_png(labels, info.palette), lab_path)
        save_png(Image.fromarray(overlay(image, labels, info.palette)), ov_path)
        rows = class_table(labels, info.classes)
        if not quiet:
            print(f"{path}: {image.shape[1]}x{image.shape[0]} -> {info.name} {sent[1]}x{sent[0]} ({mode}; "
                  f"decode {1e3 * (t1 - t0):.0f} ms, inference {1e3 * (t2 - t1):.0f} ms)")
            print(format_table(rows, info.palette, info.trained))
            print(f"wrote {lab_path}\n      {ov_path}")
        results.append({"image": str(path), "labels": lab_path, "overlay": ov_path, "classes": rows,
                        "infer_s": t2 - t1})
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client.segment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...), video files or (with "
                    "--video) frame folders")
    ap.add_argument("--url", default=None, help="server address (default localhost:8000 http, :8001 grpc); several "
                    "as a:8001,b:8001 spread requests over them and skip one that goes away")
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--model", default="segformer_b1", help="served model name (default segformer_b1)")
    ap.add_argument("--out", type=Path, default=Path("out"), help="folder for the PNGs (default ./out)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--resize", choices=("fit", "stretch"), default="fit",
                    help="fit: keep the aspect ratio (pad / dynamic size; default); stretch: squash to the input size")
    ap.add_argument("--slide", action="store_true", help="sliding-window inference over model-size crops (needs a "
                    "model with a logits output)")
    ap.add_argument("--stride", help="--slide step HxW (default 3/4 of the model's input)")
    ap.add_argument("--video", action="store_true", help="treat a folder as the frames of one video (sorted by "
                    "name, same size); video files (.mp4, .mkv, .avi, .mov, .webm ...) are found by their suffix")
    ap.add_argument("--in-flight", type=int, help="video: requests in flight (default: twice the model's max batch, "
                    "2..16)")
    ap.add_argument("--labels", action="store_true", help="video: also write one indexed label PNG per frame")
    ap.add_argument("--fps", type=float, help="video: frame rate of a frame folder (default 30) or to override")
    args = ap.parse_args(argv)
    try:
        from segformer.config import parse_size

        stride = parse_size(args.stride) if args.stride else None
    except ValueError as exc:
        ap.error(str(exc))
    from client.video import is_video

    if any(is_video(p) or (args.video and p.is_dir()) for p in args.images):
        return _videos(args)
    runner = triton_runner(args.model, args.url, args.protocol, args.timeout)
    try:
        for p in args.images:  # fail before contacting the server when a file is unusable
            load_image(p)
        segment_files(args.images, runner, args.out, mode="slide" if args.slide else args.resize, stride=stride)
    except (ImageError, RunnerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        runner.deactivate()
    return 0


def _videos(args) -> int:
    """Video files and frame folders: one overlay video each (see client.video)."""
    from client.video import VideoError, default_in_flight, format_summary, open_source, segment_video

    def make_runner():
        return triton_runner(args.model, args.url, args.protocol, args.timeout)
    try:
        for p in args.images:
            src = open_source(p, args.fps)
            probe = make_runner()
            in_flight = args.in_flight or default_in_flight(probe.activate())
            probe.deactivate()
            summary = segment_video(src, make_runner, args.out, in_flight, labels=args.labels,
                                    mode="slide" if args.slide else args.resize)
            print(format_summary(summary))
            if summary["stopped"]:
                if summary["stopped"].startswith("interrupted"):
                    print(f"{summary['stopped']}: the {summary['frames']} frames before it are written", file=sys.stderr)
                    return 130
                print(f"error: {p}: {summary['stopped']}; the {summary['frames']} frames before it are written to "
                      f"{summary['video']}", file=sys.stderr)
                return 2
    except (VideoError, ImageError, RunnerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
