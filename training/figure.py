"""Picture of shipped weights at work: test images, ground truth and each model's prediction side by side.

    python -m training.figure --data ../shared/datasets/camvid --out docs/camvid_predictions.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from training.data import find_samples, load_pair
from client.policy import InputPolicy
from client.runners import TorchRunner
from client.visualize import colourise
from segformer.weights import get_weights


def prediction(image: np.ndarray, run) -> np.ndarray:
    """A runner's labels for `image` at the image's size, the image sent as clients send it (the input policy of the
    runner's model, `fit`: letterboxed)."""
    return InputPolicy.for_model(run.info or run.activate()).predict(image, run)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.figure", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--weights", nargs="+", default=["segformer-b0-camvid", "segformer-b1-camvid"])
    ap.add_argument("--images", nargs="+", type=int, default=[10, 90, 200], help="indices into the split")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, lut = find_samples(a.data, a.split)
    entries = [get_weights(w) for w in a.weights]
    runners = [TorchRunner(w.name, tuple(w.meta["input_size"])) for w in entries]
    for run in runners:
        run.activate()
    palette = entries[0].palette
    cols = 2 + len(entries)
    fig, axes = plt.subplots(len(a.images), cols, figsize=(3.2 * cols, 2.5 * len(a.images)), squeeze=False)
    for r, idx in enumerate(a.images):
        image, label = load_pair(samples[idx], lut)
        image = np.array(image)
        gt = colourise(np.where(label == 255, 0, label).astype(np.uint8), palette)
        gt[label == 255] = 0
        panels = [(image, samples[idx].image.name), (gt, "ground truth (black: void)")]
        for w, run in zip(entries, runners):
            pred = prediction(image, run)
            valid = label != 255
            acc = (pred[valid] == label[valid]).mean()
            panels.append((colourise(pred, palette), f"{w.variant.upper()} {run.size[0]}x{run.size[1]} "
                                                     f"(pixel acc {acc:.2f})"))
        for c, (im, title) in enumerate(panels):
            axes[r, c].imshow(im)
            axes[r, c].set_title(title, fontsize=8)
            axes[r, c].axis("off")
    fig.suptitle("Shipped reference weights on CamVid test images (trained from scratch; labels in Cityscapes colours)",
                 fontsize=9)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=80)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
