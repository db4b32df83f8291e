"""Classification metrics: UAR, summary, per-class figures and the confusion matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ser.metrics import confusion, per_class, slice_metrics, summary, uar

TRUE = ["sad", "sad", "sad", "sad", "angry", "angry", "happy", "happy"]
PRED = ["sad", "sad", "sad", "angry", "angry", "sad", "happy", "fearful"]


def test_uar_is_the_mean_of_per_class_recall():
    # recalls: sad 3/4, angry 1/2, happy 1/2
    assert uar(TRUE, PRED) == pytest.approx((0.75 + 0.5 + 0.5) / 3)


def test_uar_is_blind_to_class_imbalance_where_accuracy_is_not():
    truth = ["neutral"] * 9 + ["angry"]
    always_neutral = ["neutral"] * 10
    assert summary(truth, always_neutral)["accuracy"] == pytest.approx(0.9)
    assert uar(truth, always_neutral) == pytest.approx(0.5)


def test_summary_values():
    result = summary(TRUE, PRED)
    assert set(result) == {"accuracy", "uar", "macro_f1", "clips"}
    assert result["clips"] == 8
    assert result["accuracy"] == pytest.approx(5 / 8)
    # F1 over labels present in the truth only: sad 2*.75*.75/1.5, angry .5, happy 2*1*.5/1.5
    f1 = [0.75, 0.5, 2 / 3]
    assert result["macro_f1"] == pytest.approx(np.mean(f1))
    assert all(isinstance(v, (int, float)) for v in result.values())


def test_perfect_predictions():
    assert summary(TRUE, TRUE) == {"accuracy": 1.0, "uar": 1.0, "macro_f1": 1.0, "clips": 8}


def test_per_class_includes_labels_without_support():
    result = per_class(TRUE, PRED, ["sad", "angry", "happy", "fearful", "neutral"])
    assert list(result) == ["sad", "angry", "happy", "fearful", "neutral"]
    assert result["sad"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    assert result["happy"]["precision"] == 1.0
    assert result["happy"]["recall"] == 0.5
    assert result["fearful"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["neutral"]["support"] == 0


def test_confusion_rows_are_truth_and_columns_predictions():
    labels = ["sad", "angry", "happy", "fearful"]
    counts = confusion(TRUE, PRED, labels)
    expected = [
        [3, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 1, 1],
        [0, 0, 0, 0],
    ]
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == len(TRUE)


def test_slice_metrics_score_each_group_separately():
    rows = pd.DataFrame(
        {
            "label": ["sad", "sad", "angry", "angry", "sad", "angry"],
            "sex": ["male", "male", "male", "male", "female", "female"],
            "intensity": ["normal", "strong", "normal", "strong", "normal", "normal"],
        }
    )
    predicted = ["sad", "angry", "angry", "angry", "angry", "sad"]
    result = slice_metrics(rows, predicted, ["sex", "intensity"])
    assert set(result) == {"sex", "intensity"}
    assert set(result["sex"]) == {"male", "female"}
    male, female = result["sex"]["male"], result["sex"]["female"]
    assert (male["clips"], male["accuracy"], male["uar"]) == (4, 0.75, 0.75)
    assert (female["clips"], female["accuracy"], female["uar"]) == (2, 0.0, 0.0)
    assert result["intensity"]["strong"]["clips"] == 2
    assert result["intensity"]["strong"]["uar"] == pytest.approx(0.5)
    assert sum(group["clips"] for group in result["intensity"].values()) == len(rows)
