"""What the kinds share: label encoding, class weights and the best epoch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ser import EMOTIONS
from ser.models.base import (
    best_epochs,
    class_weights,
    label_encoder,
    label_indices,
    one_hot,
    row_weights,
)


def test_labels_are_encoded_in_the_emotions_order():
    encoder = label_encoder()
    assert [str(c) for c in encoder.categories_[0]] == list(EMOTIONS)
    rows = pd.DataFrame({"label": ["sad", "neutral", "surprised"]})
    expected = [EMOTIONS.index("sad"), 0, EMOTIONS.index("surprised")]
    np.testing.assert_array_equal(label_indices(rows), expected)
    encoded = one_hot(rows)
    assert encoded.shape == (3, len(EMOTIONS)) and encoded.dtype == np.float32
    np.testing.assert_array_equal(encoded.argmax(axis=1), expected)
    np.testing.assert_array_equal(encoded.sum(axis=1), 1.0)


def test_class_weights_balance_the_counts():
    labels = np.array([0, 0, 0, 0, 0, 0, 3, 3])
    weights = class_weights(labels)
    assert set(weights) == {0, 3}  # only classes that occur
    assert weights[0] * 6 == pytest.approx(weights[3] * 2)
    assert weights[3] == pytest.approx(8 / (2 * 2))


def test_row_weights_are_the_class_weights_or_ones():
    labels = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(row_weights(labels, balanced=True), [2 / 3, 2 / 3, 2 / 3, 2.0])
    np.testing.assert_array_equal(row_weights(labels, balanced=False), 1.0)


@pytest.mark.parametrize(("monitor", "best"), [("val_uar", 2), ("val_loss", 3)])
def test_the_best_epoch_is_the_first_best_of_the_monitored_metric(monitor, best):
    curve = [
        {"val_uar": 0.2, "val_loss": 2.0},
        {"val_uar": 0.5, "val_loss": 1.5},
        {"val_uar": 0.4, "val_loss": 1.0},
        {"val_uar": 0.5, "val_loss": 1.0},
    ]
    assert best_epochs(curve, monitor) == best
