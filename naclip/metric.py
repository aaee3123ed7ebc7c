"""The streaming confusion matrix behind mIoU, aAcc and mAcc (mmsegmentation's conventions).

Rows are ground-truth classes, columns predicted classes. Pixels whose ground truth is the ignore
index (255 unless the dataset sets another) are not counted. IoU of a class = TP / (TP + FP + FN),
NaN where the class appears in neither prediction nor ground truth; Acc of a class = TP / (TP + FN),
NaN where it is absent from the ground truth. mIoU and mAcc are NaN-means over classes; aAcc = all TP
/ all counted pixels. Counts are int64, so partial matrices (per image, per process) add up exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """The (C, C) int64 confusion matrix of one prediction against its ground truth (same shape)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    valid = gt != ignore_index
    gt_v, pred_v = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
    for what, values in (("ground-truth", gt_v), ("predicted", pred_v)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{what} labels must be in 0..{num_classes - 1} (or {ignore_index} in the ground truth)")
    counts = np.bincount(gt_v * num_classes + pred_v, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class Scores:
    """Per-class and summary scores, as fractions in [0, 1]."""

    iou: np.ndarray
    acc: np.ndarray
    miou: float
    aacc: float
    macc: float


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def scores(matrix: np.ndarray) -> Scores:
    """IoU and Acc per class, mIoU, aAcc, mAcc from a confusion matrix (see the module docstring)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(matrix).astype(np.float64)
    gt_total, pred_total = matrix.sum(axis=1).astype(np.float64), matrix.sum(axis=0).astype(np.float64)
    union = gt_total + pred_total - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_total > 0, tp / gt_total, np.nan)
    total = gt_total.sum()
    aacc = float(tp.sum() / total) if total > 0 else float("nan")
    return Scores(iou=iou, acc=acc, miou=_nanmean(iou), aacc=aacc, macc=_nanmean(acc))


class ConfusionMatrix:
    """A confusion matrix accumulated image by image over a dataset."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Count one image; returns that image's own matrix (for resumable bookkeeping)."""
        part = confusion(pred, gt, self.num_classes, self.ignore_index)
        self.matrix += part
        return part

    def add(self, matrix: np.ndarray) -> None:
        """Add a partial matrix (another image, process or run)."""
        self.matrix += np.asarray(matrix, dtype=np.int64)

    def scores(self) -> Scores:
        return scores(self.matrix)
