"""Ground-truth label maps for evaluation: finding the file that belongs to an image, and mapping its ids.

Formats (``--label-format``):
- ``trainids``: pixel values are the model's class ids (Cityscapes ``*_gtFine_labelTrainIds.png``), 255 = ignore.
- ``cityscapes-ids``: Cityscapes ``*_gtFine_labelIds.png`` (unlisted ids -> ignore), mapped to the model's classes
  by class name.
- ``camvid``: CamVid 11-class (SegNet split) ids, 11 (void) -> ignore, mapped to the model's classes by class name;
  the names come from a ``classes.json`` beside the labels or above them (``{"classes": [...],
  "ignore_index": 11}``), else CamVid's own list.
- ``auto`` (default): chosen per file from its name (``labelTrainIds`` / ``labelIds``), else ``trainids``.

Mapping by name knows the usual synonyms (CamVid's tree / sign_symbol / pedestrian / bicyclist are Cityscapes'
vegetation / traffic sign / person / rider); a label class the model has no class for is refused in one line
rather than scored by index.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from segformer.config import CAMVID_CLASSES, CITYSCAPES, CITYSCAPES_ID_TO_TRAINID, same_class
from segformer.errors import ProjectError

IGNORE = 255
FORMATS = ("auto", "trainids", "cityscapes-ids", "camvid")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")


class LabelError(ProjectError, ValueError):
    """A label map that cannot be used with its image or model; the message names the files and the fix."""


CAMVID_VOID = 11


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def camvid_classes(labels_dir: Path | None = None) -> tuple[list[str], int]:
    """CamVid's class names and void id: from a classes.json in `labels_dir` or up to three folders above it (the
    dataset's own list), else the SegNet split's 11 names with void 11."""
    if labels_dir is not None:
        d = Path(labels_dir).resolve()
        for folder in [d, *d.parents][:4]:
            f = folder / "classes.json"
            if f.is_file():
                try:
                    meta = json.loads(f.read_text())
                    names = meta["classes"] if isinstance(meta, dict) else meta
                    if names and all(isinstance(n, str) for n in names):
                        return list(names), int(meta.get("ignore_index", len(names))) if isinstance(meta, dict) \
                            else len(names)
                except (OSError, ValueError, KeyError, TypeError):
                    raise LabelError(f"{f}: not a class list ({{\"classes\": [names...], \"ignore_index\": N}})") \
                        from None
    return list(CAMVID_CLASSES), CAMVID_VOID


def source_classes(kind: str, labels_dir: Path | None = None) -> dict[int, str]:
    """{label id: class name} of a label format with a label space of its own (ids not listed are ignored)."""
    if kind == "cityscapes-ids":
        return {i: CITYSCAPES.classes[t] for i, t in CITYSCAPES_ID_TO_TRAINID.items()}
    if kind == "camvid":
        names, void = camvid_classes(labels_dir)
        return {i: n for i, n in enumerate(names) if i != void}
    raise ValueError(kind)


def name_lut(kind: str, model_classes: list[str], model: str = "the model", labels_dir: Path | None = None,
             option: str = "--label-format") -> np.ndarray:
    """A 256-entry table from a format's label ids to the model's class ids, matched by class name; LabelError
    (one line) when the model has no class names or lacks a class the labels use."""
    src = source_classes(kind, labels_dir)
    if not model_classes:
        raise LabelError(f"{option} {kind}: {model} declares no class names (its config parameter `classes`), "
                         f"so its ids cannot be matched to the labels' classes; use labels in the model's own ids "
                         f"({option} trainids)")
    mapping, missing = {}, []
    for i, name in src.items():
        hit = next((j for j, c in enumerate(model_classes) if same_class(name, c)), None)
        if hit is None:
            missing.append(name)
        else:
            mapping[i] = hit
    if missing:
        raise LabelError(f"{option} {kind}: the labels' classes {', '.join(missing)} have no class in {model} "
                         f"({len(model_classes)} classes: {', '.join(model_classes[:12])}"
                         f"{', ...' if len(model_classes) > 12 else ''}); evaluate with labels in the model's "
                         f"own class ids ({option} trainids)")
    return _lut(mapping)


class LabelMapper:
    """Loads label maps for one model: ids in the label's format become the model's class ids (by name), with one
    table per format, built on first use (at once for an explicit format, so a mismatch stops before any work)."""

    def __init__(self, fmt: str, model_classes: list[str], model: str = "the model", labels_dir: Path | None = None,
                 option: str = "--label-format"):
        if fmt not in FORMATS:
            raise LabelError(f"unknown label format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.fmt, self.classes, self.model, self.labels_dir, self.option = fmt, list(model_classes), model, \
            labels_dir, option
        self.luts: dict[str, np.ndarray] = {}
        if fmt in ("camvid", "cityscapes-ids"):
            self.lut(fmt)

    def lut(self, kind: str) -> np.ndarray | None:
        if kind == "trainids":
            return None
        if kind not in self.luts:
            self.luts[kind] = name_lut(kind, self.classes, self.model, self.labels_dir, self.option)
        return self.luts[kind]

    def load(self, path: Path, image_size: tuple[int, int], image: Path | None = None) -> np.ndarray:
        arr = read_label(path, image_size, image)
        lut = self.lut(label_format(path, self.fmt))
        return arr if lut is None else lut[arr]


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
        raise LabelError(f"unknown label format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    name = path.name
    if name.endswith("labelTrainIds.png"):
        return "trainids"
    if name.endswith("labelIds.png"):
        return "cityscapes-ids"
    return "trainids"


def read_label(path: Path, image_size: tuple[int, int], image: Path | None = None) -> np.ndarray:
    """The label map's raw uint8 ids [H, W], checked against its image's size; LabelError when unusable."""
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
    return arr.astype(np.uint8)


def load_label(path: Path, image_size: tuple[int, int], fmt: str = "auto", image: Path | None = None,
               classes: list[str] | None = None) -> np.ndarray:
    """uint8 [H, W] class ids of a model with `classes` (default: Cityscapes' 19), 255 = ignore; LabelError when
    unusable."""
    return LabelMapper(fmt, list(CITYSCAPES.classes) if classes is None else classes).load(path, image_size, image)
