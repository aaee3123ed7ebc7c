"""The confusion-matrix metric against hand-computed cases (mmsegmentation's conventions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from naclip.metric import ConfusionMatrix, confusion, scores


def test_hand_computed_case_with_ignore_pixels_and_an_absent_class():
    gt = np.array([[0, 0, 1, 1], [0, 255, 1, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])  # the pixel under 255 is not counted
    matrix = confusion(pred, gt, num_classes=4)
    np.testing.assert_array_equal(matrix, [[2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    result = scores(matrix)
    # class 0: TP 2, FP 0, FN 1 -> 2/3; class 1: TP 2, FP 1, FN 1 -> 2/4; class 2: TP 1, FP 1, FN 0 -> 1/2
    np.testing.assert_allclose(result.iou[:3], [2 / 3, 1 / 2, 1 / 2])
    assert math.isnan(result.iou[3])  # absent from prediction and ground truth: left out of the mean
    assert result.miou == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
    np.testing.assert_allclose(result.acc[:3], [2 / 3, 2 / 3, 1])
    assert result.macc == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert result.aacc == pytest.approx(5 / 7)


def test_class_predicted_but_absent_from_ground_truth_counts_in_miou_not_macc():
    result = scores(confusion(np.array([0, 1]), np.array([0, 0]), num_classes=2))
    np.testing.assert_allclose(result.iou, [0.5, 0.0])
    assert result.miou == pytest.approx(0.25)
    assert math.isnan(result.acc[1]) and result.macc == pytest.approx(0.5)


def test_perfect_and_all_wrong_predictions():
    gt = np.array([[0, 1], [2, 255]])
    perfect = scores(confusion(np.array([[0, 1], [2, 0]]), gt, 3))
    assert (perfect.miou, perfect.aacc, perfect.macc) == (1.0, 1.0, 1.0)
    wrong = scores(confusion(np.array([[1, 2], [0, 1]]), gt, 3))
    assert (wrong.miou, wrong.aacc, wrong.macc) == (0.0, 0.0, 0.0)


def test_all_ignored_gives_nan_without_warnings():
    with np.errstate(all="raise"):
        result = scores(confusion(np.zeros((2, 2), int), np.full((2, 2), 255), 3))
    assert math.isnan(result.miou) and math.isnan(result.aacc) and math.isnan(result.macc)


def test_streaming_sum_equals_one_big_image_not_the_mean_of_images():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 5, (7, 9)) for _ in range(4)]
    preds = [rng.integers(0, 5, (7, 9)) for _ in range(4)]
    stream = ConfusionMatrix(5)
    parts = [stream.update(p, g) for p, g in zip(preds, gts)]
    whole = confusion(np.concatenate(preds), np.concatenate(gts), 5)
    np.testing.assert_array_equal(stream.matrix, whole)
    np.testing.assert_array_equal(sum(parts), whole)
    merged = ConfusionMatrix(5)
    merged.add(parts[0] + parts[1])
    merged.add(parts[2] + parts[3])
    assert merged.scores().miou == stream.scores().miou
    assert stream.matrix.dtype == np.int64


def test_shape_and_label_range_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="ground-truth labels must be in 0..1"):
        confusion(np.zeros(3), np.array([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="predicted labels"):
        confusion(np.array([0, 5]), np.array([0, 1]), 2)
