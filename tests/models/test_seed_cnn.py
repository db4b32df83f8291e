"""The seed CNN: the designed layer stack, early stopping on validation, refit, mixup, determinism."""

from __future__ import annotations

import keras
import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import TINY_SEED_CNN, feature_table, kind_params, make_params
from sklearn.feature_selection import SelectKBest, f_classif

from ser import EMOTIONS
from ser.config import SeedCnnParams
from ser.metrics import uar
from ser.models import seed_cnn
from ser.models.base import class_weights, label_indices
from ser.models.seed_cnn import NETWORK_FILE, SeedCnn, build_seed_cnn, training_data
from ser.table.store import feature_columns, matrix, select

DESIGN = SeedCnnParams(
    filters=(64, 128, 256),
    kernel_size=3,
    pool_size=2,
    dropout=0.5,
    dense_units=(64, 16),
    input_noise=0.0,
    l2=0.0,
)
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
    ("Dropout", 0.5),
    ("Flatten",),
    ("Dense", 64, "relu"),
    ("Dense", 16, "relu"),
    ("Dense", 7, "softmax"),
]
TINY = SeedCnnParams(**TINY_SEED_CNN)
PARAMS = kind_params(
    "seed_cnn",
    {
        "seed_cnn": {"learning_rate": 0.003},
        "train": {"epochs": 8, "early_stopping_patience": 2, "reduce_lr_patience": 1},
    },
)


class Stop(Exception):
    """Raised by spies to end ``fit`` once what it passes on has been seen."""


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


# The layer stack


def test_layer_sequence_is_the_seed_design():
    network = build_seed_cnn(118, 7, DESIGN)
    assert network.input_shape == (None, 118, 1)
    assert [describe(layer) for layer in network.layers] == SEED_DESIGN


def test_the_default_section_is_the_design_with_its_two_regularisers():
    defaults = SeedCnnParams()
    assert (defaults.filters, defaults.kernel_size, defaults.pool_size, defaults.dense_units) == (
        DESIGN.filters,
        DESIGN.kernel_size,
        DESIGN.pool_size,
        DESIGN.dense_units,
    )
    layers = [describe(layer) for layer in build_seed_cnn(118, 7, defaults).layers]
    assert layers[0] == ("GaussianNoise",)
    assert [d for d in layers[1:] if d[0] != "Dropout"] == [
        d for d in SEED_DESIGN if d[0] != "Dropout"
    ]


def test_convolutions_use_relu_and_same_padding():
    network = build_seed_cnn(118, 7, DESIGN)
    convs = [layer for layer in network.layers if type(layer).__name__ == "Conv1D"]
    assert {(c.get_config()["activation"], c.get_config()["padding"]) for c in convs} == {
        ("relu", "same")
    }


@pytest.mark.parametrize("n_features", [59, 118, 324])
def test_input_and_output_shapes(n_features):
    network = build_seed_cnn(n_features, 7, DESIGN)
    assert network.input_shape == (None, n_features, 1)
    assert network.output_shape == (None, 7)


def test_outputs_are_probabilities():
    network = build_seed_cnn(40, 7, TINY)
    inputs = np.random.default_rng(0).normal(size=(5, 40, 1)).astype(np.float32)
    probabilities = np.asarray(network(inputs, training=False))
    assert probabilities.shape == (5, 7)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_hyperparameters_shape_the_network():
    hp = SeedCnnParams(
        filters=(16, 32, 48),
        kernel_size=5,
        pool_size=3,
        dropout=0.4,
        dense_units=(32, 8),
        input_noise=0,
        l2=0,
    )
    layers = [describe(layer) for layer in build_seed_cnn(100, 4, hp).layers]
    assert [d[1] for d in layers if d[0] == "Conv1D"] == [16, 16, 16, 32, 32, 48]
    assert {d[3] for d in layers if d[0] == "Conv1D"} == {5}
    assert {d[1] for d in layers if d[0] == "MaxPooling1D"} == {3}
    assert ("Dropout", 0.4) in layers
    assert [d[1:] for d in layers if d[0] == "Dense"] == [(32, "relu"), (8, "relu"), (4, "softmax")]


def test_input_noise_and_l2_leave_the_design_in_place():
    hp = DESIGN.model_copy(update={"input_noise": 0.3, "l2": 1e-3})
    network = build_seed_cnn(118, 7, hp)
    assert [describe(layer) for layer in network.layers] == [("GaussianNoise",), *SEED_DESIGN]
    assert network.layers[0].get_config()["stddev"] == 0.3
    dense = [layer for layer in network.layers if type(layer).__name__ == "Dense"]
    assert [d.kernel_regularizer is not None for d in dense] == [True, True, False]
    assert len(network.losses) == 2  # one L2 penalty per hidden dense layer


def test_input_noise_acts_in_training_only():
    network = build_seed_cnn(40, 7, TINY.model_copy(update={"input_noise": 1.0}))
    inputs = np.random.default_rng(1).normal(size=(4, 40, 1)).astype(np.float32)
    inference = [np.asarray(network(inputs, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    training = [np.asarray(network(inputs, training=True)) for _ in range(2)]
    assert not np.allclose(training[0], training[1])


# Fitting


class Watch(keras.callbacks.Callback):
    """The learning rate each epoch trains with, and the weights at each epoch's end."""

    def on_train_begin(self, logs=None):
        self.rates, self.weights = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


@pytest.fixture(scope="module")
def table():
    # noisy enough that validation UAR does not simply climb to 1 and stay there
    return feature_table(PARAMS, spread=1.0)


def train_and_val(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return select(table, "train", with_augmented=True), select(table, "val")


@pytest.fixture(scope="module")
def fitted(table):
    watch = Watch()
    return seed_cnn.fit(*train_and_val(table), PARAMS, [watch]), watch


def test_validation_uar_and_learning_rate_are_logged_every_epoch(fitted):
    curve = fitted[0].curve
    assert [row["epoch"] for row in curve] == list(range(1, len(curve) + 1))
    expected = {"loss", "val_loss", "accuracy", "val_accuracy", "val_uar", "learning_rate"}
    assert all(expected <= set(row) for row in curve)
    assert all(0 <= row["val_uar"] <= 1 for row in curve)


def test_early_stopping_restores_the_weights_of_the_best_epoch(table, fitted):
    result, watch = fitted
    curve = [row["val_uar"] for row in result.curve]
    best = result.how["best_epoch"]
    assert best == int(np.argmax(curve)) + 1
    assert result.how["epochs_run"] == len(curve) < PARAMS.train.epochs  # it stopped early
    assert len(curve) - best == PARAMS.train.early_stopping_patience
    restored = result.model.network.get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(restored, watch.weights[-1], strict=True))
    for mine, best_weights in zip(restored, watch.weights[best - 1], strict=True):
        np.testing.assert_array_equal(mine, best_weights)
    val_rows = select(table, "val")
    predicted = result.model.predict_proba(val_rows).argmax(axis=1)
    assert uar(label_indices(val_rows), predicted) == pytest.approx(max(curve))


def test_the_curve_holds_the_learning_rate_each_epoch_trained_with(fitted):
    result, watch = fitted
    assert len(set(watch.rates)) > 1, "the plateau schedule should have lowered the rate"
    assert [row["learning_rate"] for row in result.curve] == pytest.approx(watch.rates)


def test_refit_replays_the_chosen_epochs_and_their_learning_rates(monkeypatch, table, fitted):
    result, watch = fitted
    replayed = []

    class Replay(keras.callbacks.LearningRateScheduler):
        def on_epoch_begin(self, epoch, logs=None):
            super().on_epoch_begin(epoch, logs)
            rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            replayed.append(float(rate))

    monkeypatch.setattr(keras.callbacks, "LearningRateScheduler", Replay)
    both = pd.concat(train_and_val(table), ignore_index=True)
    refitted = seed_cnn.refit(both, result)
    best = result.how["best_epoch"]
    steps_per_epoch = -(-len(both) // PARAMS.seed_cnn.batch_size)
    assert int(refitted.network.optimizer.iterations) == best * steps_per_epoch
    scale = refitted.inputs.preprocessing["scale"]
    assert scale.n_samples_seen_ == len(both)
    np.testing.assert_allclose(
        scale.mean_, matrix(both, feature_columns(table)).mean(axis=0), rtol=1e-4, atol=1e-5
    )
    assert replayed == pytest.approx(watch.rates[:best])


def test_same_params_give_identical_weights_and_curves(table, fitted):
    assert PARAMS.train.mixup_alpha > 0  # mixup's random shares are seeded too
    result, _ = fitted
    again = seed_cnn.fit(*train_and_val(table), PARAMS)
    assert again.curve == result.curve and again.how == result.how
    for mine, theirs in zip(
        result.model.network.get_weights(), again.model.network.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(mine, theirs)


def test_preprocessing_is_fitted_on_training_rows_only(table, fitted):
    inputs = fitted[0].model.inputs
    columns = feature_columns(table)
    train = matrix(select(table, "train", with_augmented=True), columns)
    scale = inputs.preprocessing["scale"]
    np.testing.assert_allclose(scale.mean_, train.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scale.scale_, train.std(axis=0), rtol=1e-4)
    assert not np.allclose(scale.mean_, matrix(table, columns).mean(axis=0), rtol=1e-3)
    assert inputs.feature_names == columns


def test_selected_features_are_chosen_on_training_rows_and_feed_the_network(table):
    train_rows = select(table, "train", with_augmented=True)
    params = kind_params("seed_cnn", {"preprocessing": {"select_k": 10, "input_clip": 3.0}})
    model = seed_cnn.untrained(train_rows, params)
    assert model.network.input_shape == (None, 10, 1)
    assert model.prepare(train_rows).shape == (len(train_rows), 10, 1)
    preprocessing = model.inputs.preprocessing
    scaled = np.clip(
        preprocessing["scale"].transform(matrix(train_rows, feature_columns(table))), -3, 3
    )
    expected = SelectKBest(f_classif, k=10).fit(scaled, train_rows["label"])
    np.testing.assert_array_equal(preprocessing["select"].get_support(), expected.get_support())


@pytest.mark.parametrize(("monitor", "mode"), [("val_uar", "max"), ("val_loss", "min")])
def test_callbacks_watch_the_monitored_metric(monkeypatch, table, monitor, mode):
    seen = {}

    class SpyPlateau(keras.callbacks.ReduceLROnPlateau):
        def __init__(self, **kwargs):
            seen["plateau"] = kwargs
            super().__init__(**kwargs)

    class SpyEarlyStopping(keras.callbacks.EarlyStopping):
        def __init__(self, **kwargs):
            seen["stopping"] = kwargs
            raise Stop

    monkeypatch.setattr(keras.callbacks, "ReduceLROnPlateau", SpyPlateau)
    monkeypatch.setattr(keras.callbacks, "EarlyStopping", SpyEarlyStopping)
    params = kind_params(
        "seed_cnn",
        {"train": {"monitor": monitor, "early_stopping_patience": 7, "reduce_lr_patience": 4}},
    )
    with pytest.raises(Stop):
        seed_cnn.fit(*train_and_val(table), params)
    assert seen["stopping"] == {
        "monitor": monitor,
        "mode": mode,
        "patience": 7,
        "restore_best_weights": True,
    }
    assert (seen["plateau"]["monitor"], seen["plateau"]["mode"]) == (monitor, mode)
    assert seen["plateau"]["patience"] == 4


@pytest.mark.parametrize("enabled", [True, False])
def test_class_weights_reach_keras(monkeypatch, table, enabled):
    seen = {}

    def spy_fit(self, *args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(keras.Model, "fit", spy_fit)
    train_rows = select(table, "train")
    rare = EMOTIONS.index("sad")
    keep = (train_rows["label"] != "sad") | (train_rows.index % 4 == 0)
    train_rows = train_rows[keep].reset_index(drop=True)
    params = kind_params("seed_cnn", {"train": {"class_weights": enabled, "mixup_alpha": 0.0}})
    with pytest.raises(Stop):
        seed_cnn.fit(train_rows, select(table, "val"), params)
    if not enabled:
        assert seen["class_weight"] is None
        return
    weights = seen["class_weight"]
    assert set(weights) == set(range(len(EMOTIONS)))
    assert weights[rare] > 2 * weights[EMOTIONS.index("happy")]


def test_without_mixup_keras_gets_the_arrays_and_class_weights():
    y = np.eye(len(EMOTIONS), dtype=np.float32)[[0, 0, 0, 1, 2, 3, 4, 5, 6]]
    x = np.random.default_rng(0).normal(size=(len(y), 5, 1)).astype(np.float32)
    data = training_data(x, y, TINY, make_params({"train": {"mixup_alpha": 0.0}}))
    assert data["x"] is x and data["y"] is y and data["shuffle"]
    assert data["class_weight"] == class_weights(y.argmax(axis=1))


def test_mixup_blends_inputs_labels_and_weights_with_one_share_per_row():
    labels = np.array([0, 0, 0, 0, 1, 2, 3, 4, 5, 6] * 3)
    y = np.eye(len(EMOTIONS), dtype=np.float32)[labels]
    x = y[..., np.newaxis].copy()  # inputs equal to labels: any mismatch in blending shows
    params = make_params({"train": {"mixup_alpha": 0.4}})
    data = training_data(x, y, TINY.model_copy(update={"batch_size": 8}), params)
    per_class = class_weights(labels)
    weight_of = np.array([per_class[c] for c in range(len(EMOTIONS))], np.float32)
    batches = list(data["x"].as_numpy_iterator())
    assert sum(len(inputs) for inputs, _, _ in batches) == len(x)
    mixed = 0
    for inputs, targets, weights in batches:
        np.testing.assert_allclose(inputs[..., 0], targets, atol=1e-6)
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
        assert np.all(targets >= 0)
        # a row's weight is its two classes' weights blended with the labels' shares
        np.testing.assert_allclose(weights, targets @ weight_of, rtol=1e-5)
        mixed += int(np.sum(targets.max(axis=1) < 0.99))
    assert mixed > len(x) // 4  # most rows are blends, not originals


# The fitted model


def test_saved_model_predicts_like_the_original(tmp_path, table, fitted):
    model = fitted[0].model
    written = model.save(tmp_path)
    assert sorted(p.name for p in written) == sorted([NETWORK_FILE, "preprocessing.joblib"])
    assert sorted(tmp_path.iterdir()) == sorted(written)
    test_rows = select(table, "test")
    loaded = SeedCnn.load(tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(test_rows), model.predict_proba(test_rows))
    assert loaded.inputs.feature_names == model.inputs.feature_names


def test_batched_and_direct_prediction_agree(table, fitted):
    model = fitted[0].model
    rows = select(table, "train", with_augmented=True)
    direct = model.predict_proba(rows)
    assert direct.shape == (len(rows), len(EMOTIONS))
    np.testing.assert_allclose(direct.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        model.predict_proba(rows, batch_size=16), direct, rtol=1e-5, atol=1e-6
    )


def test_no_rows_give_no_probabilities(table, fitted):
    empty = fitted[0].model.predict_proba(table.iloc[:0])
    assert empty.shape == (0, len(EMOTIONS))


def test_suggest_samples_the_seed_cnn_space():
    values = {
        "filters_1": 32,
        "filters_2": 64,
        "filters_3": 128,
        "kernel_size": 5,
        "pool_size": 3,
        "dense_1": 32,
        "dense_2": 8,
        "dropout": 0.25,
        "learning_rate": 0.001,
        "batch_size": 16,
    }
    params = make_params({"seed_cnn": {"input_noise": 0.1, "l2": 0.002}})
    hp = seed_cnn.suggest(
        optuna.trial.FixedTrial(values), params.tune.space.seed_cnn, params.seed_cnn
    )
    assert (hp.filters, hp.dense_units) == ((32, 64, 128), (32, 8))
    assert (hp.kernel_size, hp.pool_size, hp.dropout) == (5, 3, 0.25)
    assert (hp.learning_rate, hp.batch_size) == (0.001, 16)
    assert (hp.input_noise, hp.l2) == (0.1, 0.002)  # no range given: left as set
    ranged = make_params(
        {"tune": {"space": {"seed_cnn": {"input_noise": [0.0, 1.0], "l2": [1e-4, 1e-2]}}}}
    )
    trial = optuna.trial.FixedTrial({**values, "input_noise": 0.7, "l2": 0.005})
    hp = seed_cnn.suggest(trial, ranged.tune.space.seed_cnn, ranged.seed_cnn)
    assert (hp.input_noise, hp.l2) == (0.7, 0.005)
