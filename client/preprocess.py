"""Image decoding and the resize policy shared by the client, evaluation, calibration and training eval.

Policy: decode any Pillow-readable file to RGB, resize the whole image to the model's input size with bilinear
filtering (no letterbox, no crop), run the model (which normalises inside the graph), and bring the label map
back to the image's own size with nearest-neighbour resampling.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the fix."""


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3]; raise ImageError with a clear message otherwise."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, BMP, TIFF, WebP ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


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


def sample_images(size: tuple[int, int], n: int = 2, images: list[Path] | None = None) -> np.ndarray:
    """Real images (resized with the serving policy) when given, else smooth synthetic street-like frames."""
    if images:
        return np.stack([resize_image(load_image(p), size) for p in images[:n]])
    h, w = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    frames = []
    for i in range(n):
        base = np.stack([np.sin(3 * xx + i), np.cos(2 * yy - i), np.sin(xx * yy * 5)], -1)
        frames.append(((base * 0.5 + 0.5) * 255 + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8))
    return np.stack(frames)
