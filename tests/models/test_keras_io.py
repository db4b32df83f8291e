"""Byte-identical model files: the same training, run in two processes, saves the same bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import joblib
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from ser.models.keras_io import ZIP_EPOCH, save_keras

TESTS_DIR = Path(__file__).resolve().parent
SAVED_FILES = ["model.keras", "model.joblib", "preprocessing.joblib"]
N_FEATURES, N_CLASSES = 16, 3


@keras.saving.register_keras_serializable(package="ser_tests")
class Scale(layers.Layer):
    """A custom layer, to check that registered layers survive the rewritten file."""

    def __init__(self, factor: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor}


def training_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, N_FEATURES)).astype(np.float32), rng.integers(0, N_CLASSES, 64)


def train_and_save(directory: str) -> None:
    """Run in a fresh process: seed, train a tiny CNN and the scikit-learn objects, save them."""
    out = Path(directory)
    out.mkdir(parents=True)
    keras.utils.set_random_seed(7)
    tf.config.experimental.enable_op_determinism()
    values, labels = training_data()
    penalty = keras.regularizers.L2(1e-3)  # one object shared by two layers, as in build_cnn
    network = keras.Sequential(
        [
            keras.Input(shape=(N_FEATURES, 1)),
            Scale(0.5),
            layers.GaussianNoise(0.1),
            layers.Conv1D(4, 3, padding="same", activation="relu", kernel_regularizer=penalty),
            layers.BatchNormalization(),
            layers.Dropout(0.2),
            layers.Flatten(),
            layers.Dense(8, activation="relu", kernel_regularizer=penalty),
            layers.Dense(N_CLASSES, activation="softmax"),
        ]
    )
    network.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    network.fit(values[..., np.newaxis], labels, epochs=2, batch_size=16, verbose=0)
    save_keras(network, out / "model.keras")
    (out / "saved_at").write_text(repr(time.time()))
    np.save(out / "predictions.npy", network.predict(values[..., np.newaxis], verbose=0))

    clip = FunctionTransformer(
        np.clip, kw_args={"a_min": -2.0, "a_max": 2.0}, feature_names_out="one-to-one"
    )
    steps = [("scale", StandardScaler()), ("clip", clip), ("select", SelectKBest(f_classif, k=5))]
    preprocessing = Pipeline(steps).fit(values, labels)
    classes = np.array(["angry", "happy", "sad"]).reshape(-1, 1)
    encoder = OneHotEncoder(categories=[list(classes[:, 0])], sparse_output=False).fit(classes)
    estimator = LogisticRegression(max_iter=500).fit(preprocessing.transform(values), labels)
    joblib.dump(estimator, out / "model.joblib")
    feature_names = [f"feature_{i}" for i in range(N_FEATURES)]
    bundle = {"preprocessing": preprocessing, "encoder": encoder, "feature_names": feature_names}
    joblib.dump(bundle, out / "preprocessing.joblib")


def run_in_new_process(directory: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    script = "import sys, test_keras_io; test_keras_io.train_and_save(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", script, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def saved_twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same training run in two processes, one after the other."""
    root = tmp_path_factory.mktemp("reproducible")
    first, second = root / "first", root / "second"
    run_in_new_process(first)
    run_in_new_process(second)
    return first, second


def test_two_processes_save_identical_bytes(saved_twice: tuple[Path, Path]) -> None:
    first, second = saved_twice
    seconds_apart = float((second / "saved_at").read_text()) - float(
        (first / "saved_at").read_text()
    )
    assert seconds_apart >= 2  # past the 2 s resolution of zip times and the 1 s of date_saved
    for name in SAVED_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_saved_network_loads_and_predicts_as_trained(saved_twice: tuple[Path, Path]) -> None:
    first, _ = saved_twice
    network = keras.models.load_model(first / "model.keras", compile=False)
    assert isinstance(network.layers[0], Scale)
    assert network.layers[0].factor == 0.5
    values, _ = training_data()
    predictions = network.predict(values[..., np.newaxis], verbose=0)
    np.testing.assert_array_equal(predictions, np.load(first / "predictions.npy"))


def test_saved_network_holds_no_clock_time_or_memory_address(
    saved_twice: tuple[Path, Path],
) -> None:
    first, _ = saved_twice
    with zipfile.ZipFile(first / "model.keras") as archive:
        infos = archive.infolist()
        metadata = json.loads(archive.read("metadata.json"))
        config = json.loads(archive.read("config.json"))
    assert [info.filename for info in infos] == sorted(info.filename for info in infos)
    assert {info.date_time for info in infos} == {ZIP_EPOCH}
    assert "date_saved" not in metadata
    assert metadata["keras_version"] == keras.__version__
    assert shared_object_ids(config) == {1, 2}  # the default dtype policy, the shared L2 penalty


def shared_object_ids(node: object) -> set[int]:
    if isinstance(node, list):
        return set().union(*map(shared_object_ids, node))
    if not isinstance(node, dict):
        return set()
    own = {node["shared_object_id"]} if "shared_object_id" in node else set()
    return own.union(*map(shared_object_ids, node.values()))
