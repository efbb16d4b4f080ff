"""The accuracy guard's inputs and its one measure, shared by every guarded build (build.quantize, build.quantize_cpu,
build.openvino_ir): held-out frames prepared by the input policy exactly as clients send them, and the share of
pixels labelled differently from FP32 *on the labels clients get back* (InputPolicy.restore: the padding cut off,
the rest brought back to the image's own frame), per frame, so mean and worst frame can both be checked.

Measured over the whole padded tensor the share is wrong both ways: the letterbox padding is labelled too (on 3
CamVid test frames the padding rows alone differed 0.998 % under the INT8 `best`, the image part 0.262 %, the whole
tensor 0.448 %), and the image part is counted at the model's scale rather than the image's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.cli import progress
from client.labels import list_images
from client.policy import InputPolicy
from client.preprocess import load_image
from segformer.errors import ProjectError


class CalibrationError(ProjectError, ValueError):
    """Calibration cannot run (no images, unreadable folder); the message names the fix."""


class Prepared(np.ndarray):
    """A uint8 [N, H, W, 3] batch that remembers the InputPolicy that prepared it and, per image, where the image
    lies in the tensor (`placements`) and its own size (`image_hw`), so a guard measures the labels clients get back
    and its report can say which inputs it measured (numpy's way of carrying metadata on an array: a subclass with
    __array_finalize__). A slice keeps the policy and drops the per-image records."""

    policy: InputPolicy | None = None
    placements: tuple = ()
    image_hw: tuple = ()

    def __array_finalize__(self, obj):
        self.policy = getattr(obj, "policy", None)
        same = obj is not None and getattr(obj, "shape", None) == getattr(self, "shape", None)
        self.placements = getattr(obj, "placements", ()) if same else ()
        self.image_hw = getattr(obj, "image_hw", ()) if same else ()


def prepare_batch(images: list[np.ndarray], policy: InputPolicy) -> Prepared:
    """Decoded images prepared by `policy` and stacked, with each image's placement and size recorded.
    (InputPolicy.batch returns the tensors only; the placements are policy.place of each image's size, or of the
    fixed policy where batch() had to place a dynamic row's images into its optimum size.)"""
    out = policy.batch(images).view(Prepared)
    placer = policy
    if any(tuple(policy.place(im.shape[:2]).input_size) != out.shape[1:3] for im in images):
        placer = policy.at(policy.size)
    out.policy = policy
    out.placements = tuple(placer.place(im.shape[:2]) for im in images)
    out.image_hw = tuple(tuple(im.shape[:2]) for im in images)
    return out


def load_batch(folder: Path, policy: InputPolicy, count: int, what: str = "calibration") -> Prepared:
    """`count` images from `folder` (evenly spread over the sorted list), prepared by `policy` exactly as a client
    sends them (by default `InputPolicy.for_row(row)`: letterboxed into a fixed input, `fit`)."""
    if not isinstance(policy, InputPolicy):
        raise TypeError(f"load_batch takes an InputPolicy (InputPolicy.for_row(row)), not {type(policy).__name__}")
    try:
        files = list_images(folder)
    except FileNotFoundError as exc:
        raise CalibrationError(f"{what} images: {exc}") from None
    idx = np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)
    picked = [files[i] for i in dict.fromkeys(idx.tolist())]
    return prepare_batch([load_image(p) for p in progress(picked, desc=f"{what} images", unit="img")], policy)


def policy_record(*batches, policy: InputPolicy | None = None) -> dict | None:
    """`policy.describe()` of the given policy, else of the first batch that carries one (None: unknown)."""
    for p in (policy, *(getattr(b, "policy", None) for b in batches)):
        if p is not None:
            return p.describe()
    return None


def restored(labels: np.ndarray, images: np.ndarray) -> list[np.ndarray]:
    """The labels of each image of `images` as clients get them back (policy.restore with the image's placement);
    a batch without placements (synthetic frames) is measured over the whole tensor."""
    placements = getattr(images, "placements", ())
    if not placements:
        return list(labels)
    if len(placements) != len(labels):
        raise ValueError(f"{len(labels)} label maps for {len(placements)} placed images")
    policy = images.policy
    return [policy.restore(lab, p, hw) for lab, p, hw in zip(labels, placements, images.image_hw)]


@dataclass(frozen=True)
class Share:
    """Pixels labelled differently from FP32 on held-out frames, in the image's frame: mean over frames and the
    worst frame."""

    frames: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.frames)) if self.frames else 0.0

    @property
    def worst(self) -> float:
        return float(max(self.frames)) if self.frames else 0.0

    def within(self, mean: float, worst: float) -> bool:
        return self.mean <= mean and self.worst <= worst

    def record(self) -> dict:
        return {"mean": self.mean, "worst": self.worst, "frames": len(self.frames)}

    def text(self) -> str:
        return f"{self.mean * 100:.3f} % mean / {self.worst * 100:.3f} % worst of {len(self.frames)} frames"


def guard_share(labels: np.ndarray, ref: np.ndarray, images: np.ndarray) -> Share:
    """The guard's measure: `labels` against the FP32 `ref` (both the model's outputs for `images`), per frame, on
    the labels restored to each image's frame."""
    return Share(tuple(float(np.count_nonzero(a != b) / a.size)
                       for a, b in zip(restored(labels, images), restored(ref, images))))


def measured_on(images: np.ndarray) -> str:
    """What a guard over `images` measures, for the reports."""
    if getattr(images, "placements", ()):
        return "labels restored to each image's frame (InputPolicy.restore), per frame"
    return "whole tensor (frames without placements)"


def guard_disagreement(labels: np.ndarray, ref: np.ndarray, images: np.ndarray) -> float:
    """The mean of guard_share: the number the INT8 searches compare with their budget."""
    return guard_share(labels, ref, images).mean
