"""Training: determinism, class weights, scaling on training rows, early stopping on val_uar."""

from __future__ import annotations

import csv
import json

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_MODEL, feature_table, make_params
from sklearn.feature_selection import SelectKBest, f_classif

from ser import EMOTIONS, paths
from ser.artifacts import write_json, write_parquet
from ser.config import ModelParams
from ser.dataset import feature_columns, matrix, select
from ser.metrics import uar
from ser.train import (
    best_epochs,
    chosen_hyperparameters,
    class_weights,
    fit,
    refit_network,
    run,
    train_model,
    training_data,
)

HP = ModelParams(**TINY_MODEL)
PARAMS = make_params({"train": {"epochs": 15, "early_stopping_patience": 3}})


class Stop(Exception):
    """Raised by spies to end ``fit`` once what it passes on has been seen."""


@pytest.fixture(scope="module")
def table():
    # noisy enough that validation UAR does not simply climb to 1 and stay there
    return feature_table(PARAMS, spread=3.0)


@pytest.fixture(scope="module")
def fitted(table):
    train_rows, val_rows = select(table, "train", with_augmented=True), select(table, "val")
    return fit(train_rows, val_rows, HP, PARAMS)


def test_same_params_give_identical_weights_and_metrics(table, fitted):
    classifier, history = fitted
    again, again_history = fit(
        select(table, "train", with_augmented=True), select(table, "val"), HP, PARAMS
    )
    assert again_history.history == history.history
    for mine, theirs in zip(
        classifier.estimator.get_weights(), again.estimator.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(mine, theirs)


def test_scaler_is_fitted_on_training_rows_only(table, fitted):
    classifier, _ = fitted
    columns = feature_columns(table)
    train = matrix(select(table, "train", with_augmented=True), columns)
    everything = matrix(table, columns)
    scale = classifier.preprocessing["scale"]
    np.testing.assert_allclose(scale.mean_, train.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scale.scale_, train.std(axis=0), rtol=1e-4)
    assert not np.allclose(scale.mean_, everything.mean(axis=0), rtol=1e-3)
    assert classifier.feature_names == columns


def test_selected_features_are_chosen_on_training_rows_and_feed_the_network(table):
    train_rows, val_rows = select(table, "train", with_augmented=True), select(table, "val")
    hp = HP.model_copy(update={"select_k": 10, "input_clip": 3.0, "input_noise": 0.2})
    params = make_params({"train": {"epochs": 2}})
    classifier, _ = fit(train_rows, val_rows, hp, params)
    assert classifier.estimator.input_shape == (None, 10, 1)
    selector = classifier.preprocessing["select"]
    columns = feature_columns(table)
    scaled = np.clip(
        classifier.preprocessing["scale"].transform(matrix(train_rows, columns)), -3, 3
    )
    expected = SelectKBest(f_classif, k=10).fit(scaled, train_rows["label"])
    np.testing.assert_array_equal(selector.get_support(), expected.get_support())


def test_validation_uar_is_logged_every_epoch(fitted):
    _, history = fitted
    logs = history.history
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "val_uar"} <= set(logs)
    assert len(logs["val_uar"]) == len(logs["loss"])
    assert all(0 <= value <= 1 for value in logs["val_uar"])


def test_early_stopping_restores_the_best_val_uar(table, fitted):
    classifier, history = fitted
    curve = history.history["val_uar"]
    patience = PARAMS.train.early_stopping_patience
    assert len(curve) < PARAMS.train.epochs  # it stopped early
    assert len(curve) - 1 - int(np.argmax(curve)) == patience  # patience epochs after the best
    val_rows = select(table, "val")
    predicted = classifier.predict(matrix(val_rows, classifier.feature_names))
    assert uar(val_rows["label"].tolist(), predicted) == pytest.approx(max(curve))


@pytest.mark.parametrize(("monitor", "mode"), [("val_uar", "max"), ("val_loss", "min")])
def test_callbacks_watch_the_monitored_metric(monkeypatch, table, monitor, mode):
    seen = {}

    class SpyEarlyStopping(keras.callbacks.EarlyStopping):
        def __init__(self, **kwargs):
            seen.update(kwargs)
            raise Stop

    monkeypatch.setattr(keras.callbacks, "EarlyStopping", SpyEarlyStopping)
    params = make_params({"train": {"monitor": monitor, "early_stopping_patience": 7}})
    with pytest.raises(Stop):
        fit(select(table, "train"), select(table, "val"), HP, params)
    assert seen == {
        "monitor": monitor,
        "mode": mode,
        "patience": 7,
        "restore_best_weights": True,
    }


def test_class_weights_balance_the_counts():
    labels = np.array([0, 0, 0, 0, 0, 0, 3, 3])
    weights = class_weights(labels)
    assert set(weights) == {0, 3}  # only classes that occur
    assert weights[0] * 6 == pytest.approx(weights[3] * 2)
    assert weights[3] == pytest.approx(8 / (2 * 2))


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
    params = make_params({"train": {"class_weights": enabled}})
    with pytest.raises(Stop):
        fit(train_rows, select(table, "val"), HP, params)
    if not enabled:
        assert seen["class_weight"] is None
        return
    weights = seen["class_weight"]
    assert set(weights) == set(range(len(EMOTIONS)))
    assert weights[rare] > 2 * weights[EMOTIONS.index("happy")]


def test_refit_on_val_fits_the_chosen_epochs_again_on_train_and_val(table):
    train_rows, val_rows = select(table, "train", with_augmented=True), select(table, "val")
    params = make_params({"train": {"epochs": 6, "early_stopping_patience": 2}})
    refit_params = make_params(
        {"train": {"epochs": 6, "early_stopping_patience": 2, "refit_on_val": True}}
    )
    chosen = train_model(train_rows, val_rows, HP, params)
    refitted = train_model(train_rows, val_rows, HP, refit_params)
    assert refitted.val == chosen.val  # validation speaks for the choice, not the refit
    both = pd.concat([train_rows, val_rows], ignore_index=True)
    assert refitted.how["refit_rows"] == len(both)
    columns = feature_columns(table)
    scale = refitted.classifier.preprocessing["scale"]
    np.testing.assert_allclose(
        scale.mean_, matrix(both, columns).mean(axis=0), rtol=1e-4, atol=1e-5
    )
    steps_per_epoch = -(-len(both) // HP.batch_size)
    optimizer = refitted.classifier.estimator.optimizer
    assert int(optimizer.iterations) == chosen.how["best_epoch"] * steps_per_epoch


def test_refit_replays_the_learning_rates_validation_saw(table):
    train_rows, val_rows = select(table, "train", with_augmented=True), select(table, "val")
    params = make_params(
        {"train": {"epochs": 5, "early_stopping_patience": 5, "reduce_lr_patience": 1}}
    )
    _, history = fit(train_rows, val_rows, HP, params)
    rates = history.history["learning_rate"]
    both = pd.concat([train_rows, val_rows], ignore_index=True)
    refitted = refit_network(both, HP, params, history)
    best = best_epochs(history, "val_uar")
    assert best == int(np.argmax(history.history["val_uar"])) + 1
    final_rate = float(refitted.estimator.optimizer.learning_rate)
    assert final_rate == pytest.approx(rates[best - 1])


@pytest.mark.parametrize("kind", ["logreg", "linear_svm"])
def test_refit_of_a_linear_kind_keeps_the_chosen_c(table, kind):
    train_rows, val_rows = select(table, "train", with_augmented=True), select(table, "val")
    hp = HP.model_copy(update={"kind": kind, "C_grid": [0.01, 1.0]})
    chosen = train_model(train_rows, val_rows, hp, PARAMS)
    refitted = train_model(train_rows, val_rows, hp, make_params({"train": {"refit_on_val": True}}))
    assert refitted.hp.C == chosen.hp.C and refitted.val == chosen.val
    scale = refitted.classifier.preprocessing["scale"]
    assert scale.n_samples_seen_ == len(train_rows) + len(val_rows)


def test_without_mixup_keras_gets_the_arrays_and_class_weights():
    y = np.eye(len(EMOTIONS), dtype=np.float32)[[0, 0, 0, 1, 2, 3, 4, 5, 6]]
    x = np.random.default_rng(0).normal(size=(len(y), 5, 1)).astype(np.float32)
    data = training_data(x, y, HP, PARAMS)
    assert data["x"] is x and data["y"] is y and data["shuffle"]
    assert data["class_weight"] == class_weights(y.argmax(axis=1))


def test_mixup_blends_inputs_labels_and_weights_with_one_share_per_row():
    labels = np.array([0, 0, 0, 0, 1, 2, 3, 4, 5, 6] * 3)
    y = np.eye(len(EMOTIONS), dtype=np.float32)[labels]
    x = y[..., np.newaxis].copy()  # inputs equal to labels: any mismatch in blending shows
    params = make_params({"train": {"mixup_alpha": 0.4}})
    data = training_data(x, y, HP.model_copy(update={"batch_size": 8}), params)
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


def test_mixup_training_is_repeatable(table):
    train_rows, val_rows = select(table, "train", with_augmented=True), select(table, "val")
    params = make_params({"train": {"epochs": 3, "mixup_alpha": 0.4}})
    first, _ = fit(train_rows, val_rows, HP, params)
    second, _ = fit(train_rows, val_rows, HP, params)
    for mine, theirs in zip(
        first.estimator.get_weights(), second.estimator.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(mine, theirs)


def test_missing_hyperparameters_say_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the tune stage"):
        chosen_hyperparameters(tmp_path / "hyperparams.json")


def test_stage_saves_model_metrics_and_curve(mlflow_workspace):
    params = make_params({"train": {"epochs": 2}})
    write_parquet(paths.FEATURES, feature_table(params))
    write_json(paths.HYPERPARAMS, HP.model_dump(mode="json"))
    metrics = run(params)

    assert metrics["train_rows"] == 4 * 7 * 2 * 2  # speakers x labels x takes x (1 + noise copy)
    assert metrics["epochs_run"] == 2
    assert json.loads(paths.TRAIN_METRICS.read_text()) == metrics
    assert sorted(p.name for p in paths.MODELS_DIR.iterdir()) == sorted(
        ["model.keras", "preprocessing.joblib", "feature_config.json", "mlflow_run.json"]
    )
    with paths.TRAINING_CURVE.open() as handle:
        curve = list(csv.DictReader(handle))
    assert [row["epoch"] for row in curve] == ["1", "2"]
    assert {"loss", "val_loss", "val_uar", "learning_rate"} <= set(curve[0])

    run_id = json.loads(paths.TRAIN_RUN_ID.read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{mlflow_workspace / 'mlflow.db'}")
    logged = client.get_run(run_id)
    assert logged.data.tags["ser.stage"] == "train"
    assert logged.data.metrics["final_val_uar"] == pytest.approx(metrics["val_uar"])
    assert [m.step for m in client.get_metric_history(run_id, "val_uar")] == [1, 2]
    assert logged.data.params["chosen.kernel_size"] == str(HP.kernel_size)
