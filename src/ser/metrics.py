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
