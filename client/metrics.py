"""Accuracy measures used across the project: confusion matrix, IoU/mIoU, pixel disagreement."""
from __future__ import annotations

import numpy as np


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """[num_classes, num_classes] counts, rows = ground truth, columns = prediction; ignored pixels skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and label {target.shape} differ in size")
    t = target.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = (t != ignore_index) & (t < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(num_classes,
                                                                                          num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for classes absent from both ground truth and prediction."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def mean_iou(cm: np.ndarray, classes: list[int] | None = None) -> float:
    """Mean IoU over `classes` (default: classes present in the ground truth)."""
    iou = iou_per_class(cm)
    if classes is None:
        classes = np.flatnonzero(cm.sum(1) > 0).tolist()
    vals = iou[classes]
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if vals.size else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels whose label differs between two label maps of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    return float(np.count_nonzero(a != b) / a.size)
