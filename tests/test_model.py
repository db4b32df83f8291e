"""The seed CNN's architecture."""

from __future__ import annotations

import numpy as np
import pytest

from ser.config import ModelParams
from ser.model import build_cnn


def describe(layer) -> tuple:
    config = layer.get_config()
    kind = type(layer).__name__
    if kind == "Conv1D":
        return (kind, config["filters"], config["strides"][0], config["kernel_size"][0])
    if kind == "MaxPooling1D":
        return (kind, config["pool_size"][0], config["strides"][0])
    if kind == "Dropout":
        return (kind, config["rate"])
    if kind == "Dense":
        return (kind, config["units"], config["activation"])
    return (kind,)


SEED_DESIGN = [
    ("Conv1D", 64, 1, 3),
    ("Conv1D", 64, 2, 3),
    ("Conv1D", 64, 2, 3),
    ("MaxPooling1D", 2, 1),
    ("BatchNormalization",),
    ("Conv1D", 128, 1, 3),
    ("Conv1D", 128, 2, 3),
    ("MaxPooling1D", 2, 1),
    ("BatchNormalization",),
    ("Conv1D", 256, 2, 3),
    ("MaxPooling1D", 2, 1),
    ("BatchNormalization",),
    ("Dropout", 0.2),
    ("Flatten",),
    ("Dense", 64, "relu"),
    ("Dense", 16, "relu"),
    ("Dense", 7, "softmax"),
]


def test_layer_sequence_is_the_seed_design():
    network = build_cnn(118, 7, ModelParams())
    assert [describe(layer) for layer in network.layers] == SEED_DESIGN


def test_convolutions_use_relu_and_same_padding():
    network = build_cnn(118, 7, ModelParams())
    convs = [layer for layer in network.layers if type(layer).__name__ == "Conv1D"]
    assert {(c.get_config()["activation"], c.get_config()["padding"]) for c in convs} == {
        ("relu", "same")
    }


@pytest.mark.parametrize("n_features", [59, 118, 324])
def test_input_and_output_shapes(n_features):
    network = build_cnn(n_features, 7, ModelParams())
    assert network.input_shape == (None, n_features, 1)
    assert network.output_shape == (None, 7)


def test_outputs_are_probabilities():
    network = build_cnn(40, 7, ModelParams(filters=(8, 8, 8), dense_units=(8, 8)))
    inputs = np.random.default_rng(0).normal(size=(5, 40, 1)).astype(np.float32)
    probabilities = np.asarray(network(inputs, training=False))
    assert probabilities.shape == (5, 7)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_hyperparameters_shape_the_network():
    hp = ModelParams(
        filters=(16, 32, 48), kernel_size=5, pool_size=3, dropout=0.4, dense_units=(32, 8)
    )
    layers = [describe(layer) for layer in build_cnn(100, 4, hp).layers]
    assert [d[1] for d in layers if d[0] == "Conv1D"] == [16, 16, 16, 32, 32, 48]
    assert {d[3] for d in layers if d[0] == "Conv1D"} == {5}
    assert {d[1] for d in layers if d[0] == "MaxPooling1D"} == {3}
    assert ("Dropout", 0.4) in layers
    assert [d[1:] for d in layers if d[0] == "Dense"] == [(32, "relu"), (8, "relu"), (4, "softmax")]


def test_input_noise_and_l2_leave_the_design_in_place():
    network = build_cnn(118, 7, ModelParams(input_noise=0.3, l2=1e-3))
    kinds = [describe(layer) for layer in network.layers]
    assert kinds == [("GaussianNoise",), *SEED_DESIGN]
    assert network.layers[0].get_config()["stddev"] == 0.3
    dense = [layer for layer in network.layers if type(layer).__name__ == "Dense"]
    assert [d.kernel_regularizer is not None for d in dense] == [True, True, False]
    assert len(network.losses) == 2  # one L2 penalty per hidden dense layer


def test_input_noise_acts_in_training_only():
    network = build_cnn(40, 7, ModelParams(filters=(8, 8, 8), dense_units=(8, 8), input_noise=1.0))
    inputs = np.random.default_rng(1).normal(size=(4, 40, 1)).astype(np.float32)
    inference = [np.asarray(network(inputs, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    training = [np.asarray(network(inputs, training=True)) for _ in range(2)]
    assert not np.allclose(training[0], training[1])
