"""Image decoding and the two resampling primitives (bilinear for images, nearest for labels).

`load_image` turns any Pillow-readable file into uint8 RGB the way a viewer shows it. Where the decoded image goes
in a model's input (fit / stretch / slide, padding, dynamic sizes) is the input policy's business:
`client.policy.InputPolicy`, used by everything that prepares an image.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from client.placement import resize_image, resize_labels, to_rgb  # noqa: F401 - the resampling primitives live there
from segformer.errors import ProjectError

# load_image checks Pillow's pixel limit itself and says so in one error line; Pillow's own warning (for images
# between 1x and 2x the limit) would only print a second, Python-formatted line before it. Set once at import:
# a filter toggled per call is process-wide and races between threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(ProjectError, ValueError):
    """An input image that cannot be used; the message names the file and the fix."""


def load_image(path: str | Path, note=None) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3] the way a viewer shows it (EXIF orientation applied, 16-bit
    scaled to 8, alpha dropped, first frame of an animation); raise ImageError with a clear message otherwise.
    `note(text)` receives what was done that the user should know (default: printed to stderr)."""
    import sys

    note = note or (lambda text: print(f"note: {text}", file=sys.stderr))
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a file (pass image files, not folders)")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as im:  # Pillow refuses above 2x its limit here; between 1x and 2x it only warns
            if limit and im.width * im.height > limit:
                raise Image.DecompressionBombError(f"Image size ({im.width * im.height} pixels)")
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                im.seek(0)
                note(f"{path}: {frames} frames (animated {im.format}); segmenting the first")
            im.load()
            rgb = to_rgb(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError as exc:
        size = str(exc).split("(")[1].split(" pixels")[0] if "(" in str(exc) else "?"
        raise ImageError(f"{path}: too many pixels to decode safely ({size} pixels; Pillow's limit is "
                         f"{limit}): downscale it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, BMP, TIFF, WebP ...)") from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode it: downscale it first") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from None
    return rgb


def sample_images(size: tuple[int, int], n: int = 2, start: int = 0) -> np.ndarray:
    """`n` smooth synthetic street-like frames [n, H, W, 3], frames start..start+n-1 of one fixed sequence (frame i
    is the same whichever call makes it); real images go through client.policy.InputPolicy."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    frames = []
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        base = np.stack([np.sin(3 * xx + i), np.cos(2 * yy - i), np.sin(xx * yy * 5)], -1)
        frames.append(((base * 0.5 + 0.5) * 255 + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8))
    return np.stack(frames)
