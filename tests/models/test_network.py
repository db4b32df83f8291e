"""What the networks share in training: determinism and the epoch log with validation UAR."""

from __future__ import annotations

import ast
from pathlib import Path

import keras
import numpy as np
import pytest

from ser.metrics import uar
from ser.models.network import EpochLog, ValidationUAR, make_deterministic


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


def test_only_the_models_package_imports_tensorflow():
    """openSMILE must load before TensorFlow, which ``ser.models`` ensures for its own modules."""
    source = Path(__file__).resolve().parents[2] / "src" / "ser"
    importers = []
    for module in source.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] in ("keras", "tensorflow") for name in names):
                importers.append(module.relative_to(source).as_posix())
    assert importers and all(path.startswith("models/") for path in importers), importers
