"""Pictures and tables people look at: palette label PNGs, colour overlays, per-class pixel tables."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def palette_lut(palette) -> np.ndarray:
    """uint8 [256, 3]: class id -> colour (ids past the palette black)."""
    lut = np.zeros((256, 3), np.uint8)
    if len(palette):
        lut[: len(palette)] = np.asarray(palette, np.uint8)[:256]
    return lut


def colourise(labels: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    return palette_lut(palette)[labels]


def palette_png(labels: np.ndarray, palette: list[tuple[int, int, int]]) -> Image.Image:
    """Indexed PNG: pixel values are the class ids, the PNG palette shows their colours."""
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [c for rgb in palette for c in rgb]
    im.putpalette(flat + [0] * (768 - len(flat)))
    return im


def overlay(image: np.ndarray, labels: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    colours = colourise(labels, palette).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colours * alpha).round().astype(np.uint8)


def save_png(im: Image.Image, path: Path) -> None:
    """Write a PNG atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        im.save(tmp, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def class_table(labels: np.ndarray, classes: list[str]) -> list[tuple[int, str, int, float]]:
    """(id, name, pixels, share) for every class present, largest first."""
    counts = np.bincount(labels.reshape(-1), minlength=max(len(classes), 1))
    total = labels.size
    rows = [(i, classes[i] if i < len(classes) else f"class_{i}", int(c), c / total)
            for i, c in enumerate(counts) if c]
    return sorted(rows, key=lambda r: -r[2])


def format_table(rows, palette=None, trained: list[str] | None = None) -> str:
    """The class table; with `trained`, classes outside it are marked: the weights never saw them labelled."""
    lines = [f"{'id':>3}  {'class':<15} {'pixels':>10} {'share':>7}  colour"]
    for i, name, n, share in rows:
        colour = "#%02x%02x%02x" % tuple(palette[i]) if palette and i < len(palette) else ""
        mark = "  (never trained: not a prediction to trust)" if trained is not None and name not in trained else ""
        lines.append(f"{i:>3}  {name:<15} {n:>10} {share * 100:6.2f}%  {colour:7}{mark}".rstrip())
    if trained is not None:
        lines.append(f"     (trained on {len(trained)} of the model's classes)")
    return "\n".join(lines)
