"""What the kinds share: label encoding, class weights, epoch logs and the best epoch."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from ser import EMOTIONS
from ser.metrics import uar
from ser.models.base import (
    EpochLog,
    ValidationUAR,
    best_epochs,
    class_weights,
    label_encoder,
    label_indices,
    make_deterministic,
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


def tiny_network() -> keras.Model:
    network = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    network.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
    return network


def test_epoch_log_records_validation_uar_and_the_learning_rate():
    make_deterministic(0)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[[0, 1] * 4]
    network = tiny_network()
    progress = EpochLog("tiny", 2)
    watch = ValidationUAR(lambda: network(x, training=False), y.argmax(axis=1))
    network.fit(x, y, epochs=2, verbose=0, callbacks=[watch, progress])
    assert [row["epoch"] for row in progress.rows] == [1, 2]
    assert {"loss", "val_uar", "learning_rate"} <= set(progress.rows[0])
    assert progress.rows[0]["learning_rate"] == pytest.approx(0.05)
    predicted = np.asarray(network(x, training=False)).argmax(axis=1)
    assert progress.rows[-1]["val_uar"] == pytest.approx(uar(y.argmax(axis=1), predicted))


def test_the_same_seed_gives_the_same_initial_weights():
    make_deterministic(5)
    first = tiny_network().get_weights()
    make_deterministic(5)
    second = tiny_network().get_weights()
    make_deterministic(6)
    other = tiny_network().get_weights()
    np.testing.assert_array_equal(first[0], second[0])
    assert not np.array_equal(first[0], other[0])
