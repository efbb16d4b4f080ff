"""Where a decoded image goes in a row's input, and back: the placement math of the input policy, in one file that
imports nothing of the project (numpy and Pillow only).

`client.policy.InputPolicy` uses it on the client; `make repo` copies this file beside the decode step of every
JPEG/PNG ensemble (server/models/decode_model.py), which imports it as ``placement``. So encoded bytes sent to a
row's ensemble are decoded and placed by the same code a client uses for raw frames, and the labels come back to
the image's frame the same way.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MULTIPLE = 32


@dataclass(frozen=True)
class Placement:
    input_size: tuple[int, int]  # the tensor sent (H, W)
    content: tuple[int, int]  # the image's part of it (top-left), after scaling


def _ceil(x: float, m: int = MULTIPLE) -> int:
    return int(math.ceil(x / m) * m)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 RGB [H, W, 3] to (height, width) with bilinear filtering."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR), dtype=np.uint8)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 label map to (height, width) with nearest-neighbour sampling."""
    h, w = size
    if labels.shape[:2] == (h, w):
        return labels
    return np.array(Image.fromarray(labels).resize((w, h), Image.NEAREST), dtype=np.uint8)


def place(image_hw: tuple[int, int], model_size: tuple[int, int], size_range=None, mode: str = "fit") -> Placement:
    """Where the image goes in the model's input, for the `fit` and `stretch` modes (ValueError for others)."""
    h, w = image_hw
    if mode == "stretch":
        return Placement(tuple(model_size), tuple(model_size))
    if mode != "fit":
        raise ValueError(f"unknown resize mode {mode!r}; choose from fit, stretch, slide")
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


def to_input(image: np.ndarray, p: Placement, pad: int = 0) -> np.ndarray:
    """The uint8 [H, W, 3] tensor for placement `p`: the image scaled to p.content, padded to p.input_size."""
    scaled = resize_image(image, p.content)
    if p.content == p.input_size:
        return scaled
    out = np.full((*p.input_size, 3), pad, np.uint8)
    out[:p.content[0], :p.content[1]] = scaled
    return out


def from_output(labels: np.ndarray, p: Placement, image_hw: tuple[int, int]) -> np.ndarray:
    """The model's labels for placement `p` at the image's own size (padding cut off, nearest resize)."""
    return resize_labels(np.ascontiguousarray(labels[:p.content[0], :p.content[1]]), tuple(image_hw))


def to_rgb(im: Image.Image) -> np.ndarray:
    """uint8 RGB of any Pillow mode; 16/32-bit greyscale scaled by its maximum code value (not clipped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        grey = np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        grey = np.clip(a * 255.0 + 0.5 if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow's route for palette transparency; alpha is dropped below
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode(data: bytes) -> np.ndarray:
    """An encoded image file (JPEG, PNG, ...) as uint8 RGB [H, W, 3], as client.preprocess.load_image decodes a
    file: EXIF orientation applied, first frame, any mode to RGB. ValueError in one line when it is no image."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as im:
            if limit and im.width * im.height > limit:
                raise ValueError(f"too many pixels to decode safely ({im.width * im.height}; limit {limit})")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except ValueError:
        raise
    except UnidentifiedImageError:
        raise ValueError(f"{len(data)} bytes that are no image Pillow reads (JPEG, PNG, ...)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data
        raise ValueError(f"corrupt or truncated image ({type(exc).__name__}: {str(exc).splitlines()[:1]})") from None
