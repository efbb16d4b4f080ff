"""How an image of any size reaches a model and how its labels come back: the resize policies.

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
from dataclasses import dataclass

import numpy as np

from client.preprocess import resize_image, resize_labels

MODES = ("fit", "stretch", "slide")
MULTIPLE = 32


@dataclass(frozen=True)
class Placement:
    input_size: tuple[int, int]  # the tensor sent (H, W)
    content: tuple[int, int]  # the image's part of it (top-left), after scaling


def _ceil(x: float, m: int = MULTIPLE) -> int:
    return int(math.ceil(x / m) * m)


def place(image_hw: tuple[int, int], model_size: tuple[int, int], size_range=None, mode: str = "fit") -> Placement:
    """Where the image goes in the model's input, for the `fit` and `stretch` modes."""
    h, w = image_hw
    if mode == "stretch":
        return Placement(tuple(model_size), tuple(model_size))
    if mode != "fit":
        raise ValueError(f"unknown resize mode {mode!r}; choose from {', '.join(MODES)}")
    if size_range is None:  # letterbox into the fixed input
        mh, mw = model_size
        s = min(mh / h, mw / w)
        content = (min(mh, max(1, round(h * s))), min(mw, max(1, round(w * s))))
        return Placement(tuple(model_size), content)
    (lo_h, lo_w), (hi_h, hi_w) = size_range
    s = min(1.0, hi_h / h, hi_w / w)  # shrink only as far as the upper bound asks
    s = max(s, lo_h / h, lo_w / w) if h * s < lo_h or w * s < lo_w else s  # grow to the lower bound
    content = (max(1, round(h * s)), max(1, round(w * s)))
    content = (min(content[0], hi_h), min(content[1], hi_w))
    return Placement((max(lo_h, min(hi_h, _ceil(content[0]))), max(lo_w, min(hi_w, _ceil(content[1])))), content)


def to_input(image: np.ndarray, p: Placement) -> np.ndarray:
    """The uint8 [H, W, 3] tensor for placement `p`: the image scaled to p.content, zero-padded to p.input_size."""
    scaled = resize_image(image, p.content)
    if p.content == p.input_size:
        return scaled
    out = np.zeros((*p.input_size, 3), np.uint8)
    out[:p.content[0], :p.content[1]] = scaled
    return out


def from_output(labels: np.ndarray, p: Placement, image_hw: tuple[int, int]) -> np.ndarray:
    """The model's labels for placement `p` at the image's own size (padding cut off, nearest resize)."""
    return resize_labels(np.ascontiguousarray(labels[:p.content[0], :p.content[1]]), tuple(image_hw))


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


def predict(image: np.ndarray, runner, mode: str = "fit", stride: tuple[int, int] | None = None) -> np.ndarray:
    """Labels [H, W] at the image's own size from any runner (client.runners), by the chosen resize mode."""
    info = runner.info or runner.activate()
    if mode == "slide":
        if not info.has_logits:
            from client.runners import RunnerError

            raise RunnerError(f"{info.name} has no logits output, which --slide averages: serve a row built with "
                              "logits (make repo ... LOGITS=1, or import with --logits)")
        return slide(image, lambda x: runner.infer(x, logits=True), info.size, stride, batch=max(1, info.max_batch))
    p = place(image.shape[:2], info.size, info.size_range, mode)
    return from_output(runner.infer(to_input(image, p)[None])[0], p, image.shape[:2])
