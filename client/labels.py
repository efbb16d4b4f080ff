"""Ground-truth label maps for evaluation: finding the file that belongs to an image, and mapping its ids.

Formats (``--label-format``):
- ``trainids``: pixel values are the model's class ids (Cityscapes ``*_gtFine_labelTrainIds.png``), 255 = ignore.
- ``cityscapes-ids``: Cityscapes ``*_gtFine_labelIds.png``, mapped to train ids; unlisted ids -> ignore.
- ``camvid``: CamVid 11-class (SegNet split) ids, mapped to Cityscapes train ids; 11 (void) -> ignore.
- ``auto`` (default): chosen per file from its name (``labelTrainIds`` / ``labelIds``), else ``trainids``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segformer.config import CAMVID_TO_CITYSCAPES, CITYSCAPES_ID_TO_TRAINID

IGNORE = 255
FORMATS = ("auto", "trainids", "cityscapes-ids", "camvid")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")


class LabelError(ValueError):
    """A label map that cannot be used with its image; the message names both files."""


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


LUTS = {"cityscapes-ids": _lut(CITYSCAPES_ID_TO_TRAINID), "camvid": _lut(CAMVID_TO_CITYSCAPES)}


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder` or below it, sorted; errors name the fix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (pass a folder that holds image files)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def image_key(path: Path) -> str:
    """The part of an image's name that its label file shares (Cityscapes drops ``_leftImg8bit``)."""
    return path.stem.removesuffix("_leftImg8bit")


def find_label(image: Path, labels_dir: Path) -> Path | None:
    """The label file for `image` in `labels_dir` (searched recursively, Cityscapes or same-stem naming)."""
    key = image_key(image)
    for name in (f"{key}_gtFine_labelTrainIds.png", f"{key}_gtFine_labelIds.png", f"{key}.png",
                 f"{key}_labelTrainIds.png", f"{key}_labelIds.png", f"{key}_L.png"):
        direct = labels_dir / name
        if direct.is_file():
            return direct
        hits = sorted(labels_dir.rglob(name))
        if hits:
            return hits[0]
    return None


def label_format(path: Path, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown label format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    name = path.name
    if name.endswith("labelTrainIds.png"):
        return "trainids"
    if name.endswith("labelIds.png"):
        return "cityscapes-ids"
    return "trainids"


def load_label(path: Path, image_size: tuple[int, int], fmt: str = "auto", image: Path | None = None) -> np.ndarray:
    """uint8 [H, W] train ids (255 = ignore) at the image's size; LabelError when unusable."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Exception as exc:  # noqa: BLE001 - Pillow raises several types for bad files
        raise LabelError(f"{path}: cannot read the label map ({exc})") from None
    if arr.ndim != 2:
        raise LabelError(f"{path}: a label map must have one channel (class ids), this one has shape "
                         f"{list(arr.shape)}; colour-coded labels must be converted to ids first")
    if arr.shape != tuple(image_size):
        raise LabelError(f"{path} is {arr.shape[1]}x{arr.shape[0]} but its image {image or ''} is "
                         f"{image_size[1]}x{image_size[0]}: labels must have the image's size")
    arr = arr.astype(np.int64)
    if arr.max(initial=0) > 255:
        raise LabelError(f"{path}: ids above 255 are not class ids")
    kind = label_format(path, fmt)
    arr = arr.astype(np.uint8)
    return LUTS[kind][arr] if kind in LUTS else arr
