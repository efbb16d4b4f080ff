"""The input policy: how a decoded image becomes the tensor a row takes, and how its labels come back to the
image's frame. One record (`InputPolicy`), built from the row's metadata as torchvision's `Weights.transforms` /
timm's `PretrainedCfg` travel with their weights, and used by everything that prepares an image: the clients and
video, INT8 calibration and every accuracy guard, the load generators and the benches. So a guard measures the
inputs the served model is sent.

Modes:

- ``fit`` (default): keep the image's aspect ratio. A fixed-size model gets the image scaled to fit inside its
  input and padded (bottom/right, zeros, as mmsegmentation pads); a dynamic-size model gets the image at its own
  size, scaled only as far as needed to lie within the model's bounds and padded up to a multiple of 32. The labels
  of the padding are cut off, and the rest is brought back to the image's size (nearest).
- ``stretch``: resize the whole image to the model's input size, ignoring the aspect ratio (the old behaviour).
- ``slide``: mmsegmentation-style sliding window for frames larger than the model's input: the image is scaled
  (aspect kept) so it covers the model input, cut into model-size crops every ``stride`` pixels, and each pixel's
  logits are averaged over the crops that hold it before the argmax. Needs a model with a ``logits`` output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from client import placement as _placement
from client.placement import MULTIPLE, Placement, from_output, to_input  # noqa: F401 - this module's API
from client.preprocess import resize_image, resize_labels
from segformer.errors import ProjectError

MODES = ("fit", "stretch", "slide")
DEFAULT_MODE = "fit"  # what clients send unless told otherwise, and so what calibration and guards see


class PolicyError(ProjectError, ValueError):
    """A policy that cannot apply (an unknown mode, slide on a model without logits)."""


def place(image_hw: tuple[int, int], model_size: tuple[int, int], size_range=None, mode: str = "fit") -> Placement:
    """Where the image goes in the model's input, for the `fit` and `stretch` modes (client.placement, the code the
    decode step of a row's JPEG ensemble runs too)."""
    if mode not in ("fit", "stretch"):
        raise PolicyError(f"unknown resize mode {mode!r}; choose from {', '.join(MODES)}")
    return _placement.place(image_hw, model_size, size_range, mode)


def windows(size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of crops covering `size` (the last crop of a row/column flush with the edge)."""
    def starts(n, c, s):
        if n <= c:
            return [0]
        k = int(math.ceil((n - c) / s)) + 1
        return sorted({min(i * s, n - c) for i in range(k)})

    return [(y, x) for y in starts(size[0], crop[0], stride[0]) for x in starts(size[1], crop[1], stride[1])]


def slide_scale(image_hw, crop) -> tuple[int, int]:
    """The size the image is scaled to before sliding: aspect kept, covering one crop in both directions."""
    h, w = image_hw
    s = max(crop[0] / h, crop[1] / w)
    return max(crop[0], round(h * s)), max(crop[1], round(w * s))


def slide(image: np.ndarray, infer_logits, crop: tuple[int, int], stride: tuple[int, int] | None = None,
          batch: int = 2) -> np.ndarray:
    """Sliding-window labels at the image's size. `infer_logits(uint8 [n, ch, cw, 3]) -> float [n, K, ch, cw]`."""
    stride = stride or (max(MULTIPLE, crop[0] * 3 // 4), max(MULTIPLE, crop[1] * 3 // 4))
    scaled_hw = slide_scale(image.shape[:2], crop)
    scaled = resize_image(image, scaled_hw)
    corners = windows(scaled_hw, crop, stride)
    acc, count = None, np.zeros(scaled_hw, np.float32)
    for i in range(0, len(corners), batch):
        group = corners[i:i + batch]
        crops = np.stack([scaled[y:y + crop[0], x:x + crop[1]] for y, x in group])
        logits = np.asarray(infer_logits(crops), np.float32)
        if acc is None:
            acc = np.zeros((logits.shape[1], *scaled_hw), np.float32)
        for (y, x), lg in zip(group, logits):
            acc[:, y:y + crop[0], x:x + crop[1]] += lg
            count[y:y + crop[0], x:x + crop[1]] += 1
    labels = (acc / count).argmax(0).astype(np.uint8)
    return resize_labels(labels, image.shape[:2])


@dataclass(frozen=True)
class InputPolicy:
    """How images reach one row: `mode` (fit / stretch / slide), the row's input `size` (fixed, or the optimum of
    a dynamic row), its `size_range` (dynamic rows), the `multiple` dynamic sizes are padded to and the `pad`
    value. Built from the row's metadata: `for_model(info)` (a runner's ModelInfo: what clients see),
    `for_row(variant)` (the serving table: what the build's calibration and guards see)."""

    size: tuple[int, int]
    size_range: tuple[tuple[int, int], tuple[int, int]] | None = None
    mode: str = "fit"
    multiple: int = MULTIPLE
    pad: int = 0
    stride: tuple[int, int] | None = None  # slide only

    def __post_init__(self):
        if self.mode not in MODES:
            raise PolicyError(f"unknown resize mode {self.mode!r}; choose from {', '.join(MODES)}")
        object.__setattr__(self, "size", tuple(int(x) for x in self.size))
        if self.size_range is not None:
            object.__setattr__(self, "size_range", tuple(tuple(int(x) for x in s) for s in self.size_range))

    # -- construction from a row's metadata ------------------------------------------------------------------
    @classmethod
    def for_model(cls, info, mode: str = DEFAULT_MODE, stride=None) -> "InputPolicy":
        """What a client sends to a served (or local) model described by a runner's ModelInfo."""
        return cls(tuple(info.size), info.size_range, mode, stride=stride)

    @classmethod
    def for_row(cls, row, mode: str = DEFAULT_MODE) -> "InputPolicy":
        """What a client sends by default to a row of the serving table (build.variants.ServingVariant)."""
        return cls(tuple(row.size), row.size_range, mode)

    def at(self, size: tuple[int, int]) -> "InputPolicy":
        """The same policy for a fixed input of `size` (e.g. the smaller analysis size of the INT8 search)."""
        return replace(self, size=tuple(size), size_range=None)

    def describe(self) -> dict:
        """The record as plain data (build.json notes which policy calibrated and guarded a row)."""
        d = {"mode": self.mode, "size": list(self.size), "multiple": self.multiple, "pad": self.pad}
        if self.size_range:
            d["size_range"] = [list(s) for s in self.size_range]
        return d

    # -- image -> tensor -> labels ---------------------------------------------------------------------------
    def place(self, image_hw: tuple[int, int]) -> Placement:
        if self.mode == "slide":
            return Placement(self.size, self.size)
        return place(image_hw, self.size, self.size_range, self.mode)

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Placement]:
        """The uint8 [H, W, 3] tensor sent for `image`, and where the image lies in it."""
        if self.mode == "slide":
            raise PolicyError("slide runs several crops per image: use InputPolicy.predict")
        p = self.place(image.shape[:2])
        return to_input(image, p, self.pad), p

    def restore(self, labels: np.ndarray, p: Placement, image_hw: tuple[int, int]) -> np.ndarray:
        """The model's labels for placement `p` back at the image's own size."""
        return from_output(labels, p, image_hw)

    def load(self, path) -> np.ndarray:
        """An image file decoded (client.preprocess.load_image) and prepared: exactly the tensor a client sends."""
        from client.preprocess import load_image

        return self.prepare(load_image(path))[0]

    def batch(self, images, between=None) -> np.ndarray:
        """Decoded images (or files) prepared and stacked [N, H, W, 3]. Images of a dynamic row that would be sent
        at different sizes are placed into the row's optimum size instead (one batch needs one shape).
        `between()`, when given, is called after each image (a load generator's worker yields there)."""
        from client.preprocess import load_image

        decoded, tensors = [], []
        for x in images:
            decoded.append(load_image(x) if not isinstance(x, np.ndarray) else x)
            tensors.append(self.prepare(decoded[-1])[0])
            if between:
                between()
        if len({t.shape for t in tensors}) > 1:
            fixed = self.at(self.size)
            tensors = [fixed.prepare(im)[0] for im in decoded]
        return np.stack(tensors)

    def frames(self, folder=None, n: int = 8, between=None) -> list[np.ndarray]:
        """Up to `n` request tensors for load generators and benches: the images of `folder` prepared as a client
        prepares them, or (no folder) smooth street-like synthetic frames at the input size, made one at a time
        with `between()` called after each."""
        if folder:
            from client.labels import list_images

            return list(self.batch(list_images(Path(folder))[:n], between))
        from client.preprocess import sample_images

        out = []
        for i in range(n):
            out.append(sample_images(self.size, 1, start=i)[0])
            if between:
                between()
        return out

    def predict(self, image: np.ndarray, runner) -> np.ndarray:
        """Labels [H, W] at the image's own size from any runner (client.runners)."""
        info = runner.info or runner.activate()
        if self.mode == "slide":
            if not info.has_logits:
                raise PolicyError(f"{info.name} has no logits output, which --slide averages: serve a row built "
                                  "with logits (make repo ... LOGITS=1, or import with --logits)")
            return slide(image, lambda x: runner.infer(x, logits=True), self.size, self.stride,
                         batch=max(1, info.max_batch))
        x, p = self.prepare(image)
        return self.restore(runner.infer(x[None])[0], p, image.shape[:2])


def predict(image: np.ndarray, runner, mode: str = DEFAULT_MODE, stride: tuple[int, int] | None = None) -> np.ndarray:
    """Labels [H, W] at the image's own size from any runner, by the policy of the runner's model and `mode`."""
    info = runner.info or runner.activate()
    return InputPolicy.for_model(info, mode, stride).predict(image, runner)
