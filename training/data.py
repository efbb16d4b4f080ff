"""Segmentation datasets on disk (CamVid and Cityscapes layouts) and the training augmentation.

Layouts found automatically under a root folder:
- CamVid (SegNet split): ``{split}/images/NAME.jpg`` + ``{split}/labels/NAME.png``, labels mapped to
  Cityscapes train ids (``segformer.config.CAMVID_TO_CITYSCAPES``).
- Cityscapes: ``leftImg8bit/{split}/CITY/*_leftImg8bit.png`` + ``gtFine/{split}/CITY/*_gtFine_labelTrainIds.png``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segformer.config import CAMVID_TO_CITYSCAPES

IGNORE = 255


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def find_samples(root: Path, split: str) -> tuple[list[Sample], np.ndarray | None]:
    """Return the (image, label) pairs of a split and the label lookup table to apply (or None)."""
    root = Path(root)
    if (root / split / "images").is_dir():
        samples = []
        for img in sorted((root / split / "images").iterdir()):
            lab = root / split / "labels" / (img.stem + ".png")
            if lab.is_file():
                samples.append(Sample(img, lab))
        lut = _lut(CAMVID_TO_CITYSCAPES)
    elif (root / "leftImg8bit" / split).is_dir():
        samples = []
        for img in sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            lab = root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            if lab.is_file():
                samples.append(Sample(img, lab))
        lut = None
    else:
        raise FileNotFoundError(
            f"no dataset split {split!r} under {root}: expected {split}/images + {split}/labels (CamVid layout) "
            f"or leftImg8bit/{split} + gtFine/{split} (Cityscapes layout)")
    if not samples:
        raise FileNotFoundError(f"split {split!r} under {root} has no image/label pairs")
    return samples, lut


def load_pair(sample: Sample, lut: np.ndarray | None) -> tuple[Image.Image, np.ndarray]:
    image = Image.open(sample.image).convert("RGB")
    label = np.asarray(Image.open(sample.label))
    if label.ndim != 2:
        raise ValueError(f"label {sample.label} is not a single-channel label map")
    if lut is not None:
        label = lut[label]
    if label.shape != (image.height, image.width):
        raise ValueError(f"label {sample.label} is {label.shape[1]}x{label.shape[0]} but its image is "
                         f"{image.width}x{image.height}")
    return image, label


@dataclass
class Augment:
    """Random scale (with aspect jitter), crop, flip and colour jitter; pads with the ignore label."""

    crop: tuple[int, int] = (512, 512)
    scale: tuple[float, float] = (1.0, 3.0)
    aspect: tuple[float, float] = (0.8, 1.25)
    jitter: float = 0.25

    def __call__(self, image: Image.Image, label: np.ndarray, rng: random.Random):
        s = rng.uniform(*self.scale)
        a = rng.uniform(*self.aspect)
        w = max(1, round(image.width * s * a ** 0.5))
        h = max(1, round(image.height * s / a ** 0.5))
        image = image.resize((w, h), Image.BILINEAR)
        label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
        img = np.asarray(image, dtype=np.uint8)
        ch, cw = self.crop
        out_img = np.zeros((ch, cw, 3), np.uint8)
        out_lab = np.full((ch, cw), IGNORE, np.uint8)
        y0 = rng.randint(0, max(0, h - ch))
        x0 = rng.randint(0, max(0, w - cw))
        patch = img[y0:y0 + ch, x0:x0 + cw]
        out_img[: patch.shape[0], : patch.shape[1]] = patch
        out_lab[: patch.shape[0], : patch.shape[1]] = label[y0:y0 + ch, x0:x0 + cw]
        if rng.random() < 0.5:
            out_img, out_lab = out_img[:, ::-1], out_lab[:, ::-1]
        if self.jitter:
            f = out_img.astype(np.float32)
            f = f * rng.uniform(1 - self.jitter, 1 + self.jitter)  # brightness
            mean = f.mean()
            f = (f - mean) * rng.uniform(1 - self.jitter, 1 + self.jitter) + mean  # contrast
            grey = f.mean(axis=2, keepdims=True)
            f = (f - grey) * rng.uniform(1 - self.jitter, 1 + self.jitter) + grey  # saturation
            out_img = np.clip(f, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out_img), np.ascontiguousarray(out_lab)


class TrainSet:
    """Indexable training set for torch's DataLoader: (uint8 HWC image, uint8 HW label)."""

    def __init__(self, root: Path, split: str, augment: Augment, seed: int = 0):
        self.samples, self.lut = find_samples(root, split)
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        rng = random.Random(hash((self.seed, self.epoch, i, random.random())))
        image, label = load_pair(self.samples[i], self.lut)
        return self.augment(image, label, rng)
