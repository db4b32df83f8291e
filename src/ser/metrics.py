"""Classification metrics used for validation, tuning and the test report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def uar(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """Unweighted average recall (balanced accuracy): the field's headline metric."""
    return float(balanced_accuracy_score(y_true, y_pred))


def summary(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """Accuracy, UAR and macro-F1 over the labels that occur in ``y_true``."""
    present = sorted(set(y_true))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "uar": uar(y_true, y_pred),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        "clips": len(y_true),
    }


def per_class(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each label."""
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(labels), zero_division=0
    )
    return {
        label: {
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(n),
        }
        for label, p, r, f, n in zip(labels, precision, recall, f1, support, strict=True)
    }


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts with true labels as rows and predictions as columns."""
    return confusion_matrix(y_true, y_pred, labels=list(labels))


def slice_metrics(rows: pd.DataFrame, predicted: list[str], columns: list[str]) -> dict:
    """The summary metrics within each value of each slice column (e.g. sex=female)."""
    frame = rows.assign(predicted=predicted)
    return {
        column: {
            str(value): summary(group["label"].tolist(), group["predicted"].tolist())
            for value, group in frame.groupby(column)
        }
        for column in columns
    }


CALIBRATION_BINS = 10
"""Equal-width confidence bins of the expected calibration error and the reliability diagram."""


def reliability(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
) -> pd.DataFrame:
    """Per confidence bin (top probability in equal-width bins over [0, 1]): the clips in
    it, their mean confidence and how often the top class was right (``labels``: indices)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = [
        {
            "bin": b,
            "bin_low": b / bins,
            "bin_high": (b + 1) / bins,
            "clips": int(np.sum(index == b)),
            "confidence": float(confidence[index == b].mean()) if np.any(index == b) else None,
            "accuracy": float(correct[index == b].mean()) if np.any(index == b) else None,
        }
        for b in range(bins)
    ]
    return pd.DataFrame(rows)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """The clip-weighted mean gap between confidence and accuracy over the bins (ECE)."""
    table = reliability(probabilities, labels, bins).dropna()
    gaps = (table["confidence"] - table["accuracy"]).abs()
    return float((gaps * table["clips"]).sum() / max(1, table["clips"].sum()))


def reliability_curve(
    uncalibrated: np.ndarray, calibrated: np.ndarray, labels: np.ndarray
) -> pd.DataFrame:
    """The reliability diagram's data, one row per confidence bin: its middle (``confidence``,
    also ``perfect``: what a calibrated model's accuracy would be) and the accuracy of the
    clips in it before and after calibration (empty where a bin has no clip)."""
    before, after = reliability(uncalibrated, labels), reliability(calibrated, labels)
    return pd.DataFrame(
        {
            "confidence": (before["bin_low"] + before["bin_high"]) / 2,
            "perfect": (before["bin_low"] + before["bin_high"]) / 2,
            "uncalibrated": before["accuracy"],
            "calibrated": after["accuracy"],
            "clips_uncalibrated": before["clips"],
            "clips_calibrated": after["clips"],
        }
    )
