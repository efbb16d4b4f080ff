"""Segment images with a SegFormer served by Triton; write label maps and overlays, print the class table.

    python -m client.segment street.png [more.jpg ...] [--url localhost:8000] [--protocol http|grpc]
                             [--model segformer_b1] [--out DIR]

For each image: decode (any Pillow mode -> RGB), resize to the model's input size (bilinear), infer, bring the
labels back to the image size (nearest), write NAME_labels.png (indexed PNG: pixel = class id) and
NAME_overlay.png, and print the pixel share of every class found.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from client.preprocess import ImageError, load_image, resize_image, resize_labels
from client.runners import RunnerError, TritonRunner
from client.visualize import class_table, format_table, overlay, palette_png, save_png


def segment_files(paths: list[Path], runner: TritonRunner, out: Path, quiet: bool = False) -> list[dict]:
    info = runner.info or runner.activate()
    results = []
    for path in paths:
        t0 = time.perf_counter()
        image = load_image(path)
        x = resize_image(image, info.size)[None]
        t1 = time.perf_counter()
        labels = runner.infer(x)[0]
        t2 = time.perf_counter()
        labels = resize_labels(labels, image.shape[:2])
        stem = Path(path).stem
        lab_path, ov_path = out / f"{stem}_labels.png", out / f"{stem}_overlay.png"
        save_png(palette_png(labels, info.palette), lab_path)
        save_png(Image.fromarray(overlay(image, labels, info.palette)), ov_path)
        rows = class_table(labels, info.classes)
        if not quiet:
            print(f"{path}: {image.shape[1]}x{image.shape[0]} -> {info.name} {info.size[1]}x{info.size[0]} "
                  f"(preprocess {1e3 * (t1 - t0):.0f} ms, inference {1e3 * (t2 - t1):.0f} ms)")
            print(format_table(rows, info.palette))
            print(f"wrote {lab_path}\n      {ov_path}")
        results.append({"image": str(path), "labels": lab_path, "overlay": ov_path, "classes": rows,
                        "infer_s": t2 - t1})
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client.segment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    ap.add_argument("--url", default=None, help="server address (default localhost:8000 http, :8001 grpc)")
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--model", default="segformer_b1", help="served model name (default segformer_b1)")
    ap.add_argument("--out", type=Path, default=Path("out"), help="folder for the PNGs (default ./out)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    args = ap.parse_args(argv)
    runner = TritonRunner(args.model, args.url, args.protocol, args.timeout)
    try:
        for p in args.images:  # fail before contacting the server when a file is unusable
            load_image(p)
        segment_files(args.images, runner, args.out)
    except (ImageError, RunnerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        runner.deactivate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
