"""train stage: fit ``model.kind`` on training speakers; every choice made on validation speakers.

The seed CNN is early-stopped on validation UAR; a linear baseline (``ser.baselines``)
takes the C of ``model.C_grid`` that scores best there. With ``train.refit_on_val`` the
chosen set-up (epochs and learning rates, or C) is then fitted again on training and
validation speakers together; the validation metrics reported are those of the choice.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from ser import EMOTIONS, paths
from ser.artifacts import read_json, write_json, write_with
from ser.baselines import fit_estimator, fit_linear
from ser.classifier import Classifier, fit_preprocessing, label_encoder
from ser.config import ModelParams, Params
from ser.dataset import feature_columns, load_features, matrix, select
from ser.metrics import summary, uar
from ser.model import build_cnn
from ser.tracking import stage_run

log = logging.getLogger(__name__)


def make_deterministic(seed: int) -> None:
    """Same seed and data give the same weights on CPU."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class ValidationUAR(keras.callbacks.Callback):
    """Adds ``val_uar`` to each epoch's logs so callbacks after it can monitor it."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray) -> None:
        super().__init__()
        self.inputs, self.labels = inputs, labels

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        predicted = np.asarray(self.model(self.inputs, training=False)).argmax(axis=1)
        if logs is not None:
            logs["val_uar"] = uar(self.labels, predicted)


def log_step(row: dict[str, float]) -> None:
    """One epoch's (or C candidate's) metrics to MLflow, at step ``row["epoch"]``, and the log."""
    step = int(row["epoch"])
    mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=step)
    log.info("epoch %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in row.items()))


def write_curve(target: Path, rows: list[dict[str, float]]) -> None:
    """The training curve as a CSV for `dvc plots`, one row per epoch (or C candidate)."""

    def write(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    write_with(target, write)


class EpochLogger(keras.callbacks.Callback):
    """Writes each epoch's metrics and learning rate to MLflow and to a CSV for `dvc plots`."""

    def __init__(self, csv_path: Path) -> None:
        super().__init__()
        self.csv_path = csv_path
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["learning_rate"] = float(self.model.optimizer.learning_rate)
        self.rows.append(row)
        log_step(row)

    def on_train_end(self, logs: dict | None = None) -> None:
        write_curve(self.csv_path, self.rows)


def chosen_hyperparameters(path: Path = paths.HYPERPARAMS) -> ModelParams:
    """The hyperparameters the tune stage chose."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no chosen hyperparameters (run the tune stage)")
    return ModelParams.model_validate(read_json(path))


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights of the classes present in ``labels`` (encoded indices)."""
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


def training_data(
    x: np.ndarray, y: np.ndarray, hp: ModelParams, params: Params
) -> dict[str, object]:
    """Keras ``fit`` arguments for the training rows, shuffled every epoch.

    With ``train.mixup_alpha`` > 0, each batch is mixed with a shuffled copy of itself
    (mixup: inputs, one-hot labels and class weights blended with a Beta(alpha, alpha)
    share per row), a regulariser that suits small corpora of few speakers.
    """
    t = params.train
    weights = class_weights(y.argmax(axis=1)) if t.class_weights else None
    if t.mixup_alpha == 0:
        return {"x": x, "y": y, "batch_size": hp.batch_size, "class_weight": weights,
                "shuffle": True}  # fmt: skip
    per_row = np.ones(len(y), np.float32)
    if weights:
        per_row = np.array([weights[c] for c in y.argmax(axis=1)], np.float32)

    def mix(inputs: tf.Tensor, targets: tf.Tensor, row_weights: tf.Tensor) -> tuple:
        rows = tf.shape(inputs)[0]
        first = tf.random.gamma([rows], t.mixup_alpha)
        share = first / (first + tf.random.gamma([rows], t.mixup_alpha))
        partner = tf.random.shuffle(tf.range(rows))

        def blend(values: tf.Tensor) -> tf.Tensor:
            mixed = tf.reshape(share, [-1] + [1] * (len(values.shape) - 1))
            return mixed * values + (1 - mixed) * tf.gather(values, partner)

        return blend(inputs), blend(targets), blend(row_weights)

    rows = tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32), per_row))
    batches = rows.shuffle(len(x), seed=t.seed).batch(hp.batch_size).map(mix)
    return {"x": batches, "shuffle": False}  # the dataset reshuffles itself every epoch


def untrained_network(rows: pd.DataFrame, hp: ModelParams, params: Params) -> Classifier:
    """Preprocessing fitted on ``rows`` and a freshly initialised, compiled seed CNN."""
    make_deterministic(params.train.seed)
    columns = feature_columns(rows)
    encoder = label_encoder()
    labels = encoder.transform(rows[["label"]].to_numpy()).argmax(axis=1)
    preprocessing = fit_preprocessing(matrix(rows, columns), labels, hp)
    inputs = len(preprocessing.get_feature_names_out())  # fewer than columns with select_k
    network = build_cnn(inputs, len(EMOTIONS), hp)
    network.compile(
        optimizer=keras.optimizers.Adam(hp.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return Classifier(network, preprocessing, encoder, columns, params.audio, params.features)


def network_inputs(classifier: Classifier, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Prepared features and one-hot labels of ``rows``."""
    values = classifier.prepare(matrix(rows, classifier.feature_names))
    return values, classifier.encoder.transform(rows[["label"]].to_numpy())


def fit(
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    hp: ModelParams,
    params: Params,
    extra_callbacks: list[keras.callbacks.Callback] = (),
) -> tuple[Classifier, keras.callbacks.History]:
    """Preprocess, encode and fit the CNN; early stopping restores the best weights."""
    classifier = untrained_network(train_rows, hp, params)
    x_train, y_train = network_inputs(classifier, train_rows)
    x_val, y_val = network_inputs(classifier, val_rows)
    t = params.train
    mode = "max" if t.monitor == "val_uar" else "min"
    callbacks = [
        ValidationUAR(x_val, y_val.argmax(axis=1)),
        keras.callbacks.ReduceLROnPlateau(
            monitor=t.monitor, mode=mode, factor=t.reduce_lr_factor, patience=t.reduce_lr_patience
        ),
        keras.callbacks.EarlyStopping(
            monitor=t.monitor, mode=mode, patience=t.early_stopping_patience,
            restore_best_weights=True,
        ),
        *extra_callbacks,
    ]  # fmt: skip
    history = classifier.estimator.fit(
        **training_data(x_train, y_train, hp, params),
        validation_data=(x_val, y_val),
        epochs=t.epochs, callbacks=callbacks, verbose=0,
    )  # fmt: skip
    return classifier, history


def best_epochs(history: keras.callbacks.History, monitor: str) -> int:
    """How many epochs the early-stopped network had when it was at its best."""
    curve = history.history[monitor]
    best = np.argmax(curve) if monitor == "val_uar" else np.argmin(curve)
    return int(best) + 1


def refit_network(
    rows: pd.DataFrame, hp: ModelParams, params: Params, history: keras.callbacks.History
) -> Classifier:
    """A fresh CNN fitted on ``rows`` for the best epochs of ``history``, replaying its
    learning rates: what validation chose, without holding validation speakers out."""
    classifier = untrained_network(rows, hp, params)
    epochs = best_epochs(history, params.train.monitor)
    rates = history.history["learning_rate"][:epochs]
    x, y = network_inputs(classifier, rows)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, _: float(rates[epoch]))
    classifier.estimator.fit(
        **training_data(x, y, hp, params), epochs=epochs, callbacks=[schedule], verbose=0
    )
    return classifier


@dataclass
class Trained:
    """The model to save and test, and what validation said about it."""

    classifier: Classifier  # refitted on training + validation rows with train.refit_on_val
    hp: ModelParams  # the linear kinds' C is the one validation chose
    val: dict[str, float]  # validation metrics of the model validation chose, before any refit
    how: dict[str, float]  # epochs or C


def train_model(
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    hp: ModelParams,
    params: Params,
    curve_csv: Path | None = None,
) -> Trained:
    """Fit ``hp.kind`` choosing on validation rows, then refit on both if ``train.refit_on_val``.

    With ``curve_csv``, each epoch (or C candidate) goes to MLflow and that CSV.
    """
    if hp.kind == "cnn":
        callbacks = [EpochLogger(curve_csv)] if curve_csv else []
        classifier, history = fit(train_rows, val_rows, hp, params, callbacks)
        how = {
            "epochs_run": len(history.history["loss"]),
            "best_epoch": best_epochs(history, params.train.monitor),
        }
    else:
        classifier, hp, curve = fit_linear(train_rows, val_rows, hp, params)
        if curve_csv:
            for row in curve:
                log_step(row)
            write_curve(curve_csv, curve)
        how = {"C": hp.C}
    predicted = classifier.predict(matrix(val_rows, classifier.feature_names))
    val = summary(val_rows["label"].tolist(), predicted)
    if params.train.refit_on_val:
        rows = pd.concat([train_rows, val_rows], ignore_index=True)
        if hp.kind == "cnn":
            classifier = refit_network(rows, hp, params, history)
        else:
            classifier = fit_estimator(rows, hp, params)
        how["refit_rows"] = len(rows)
    return Trained(classifier, hp, val, how)


def run(params: Params) -> dict[str, float]:
    """Train the chosen kind on the training speakers, save ``models/`` and validation metrics."""
    features = load_features(paths.FEATURES)
    train_rows = select(features, "train", with_augmented=True)
    val_rows = select(features, "val")
    hp = chosen_hyperparameters()
    with stage_run("train", params) as run:
        trained = train_model(train_rows, val_rows, hp, params, paths.TRAINING_CURVE)
        classifier, hp, val, how = trained.classifier, trained.hp, trained.val, trained.how
        mlflow.log_params({f"chosen.{k}": v for k, v in hp.model_dump().items()})
        metrics = {**{f"val_{k}": v for k, v in val.items()}, **how, "train_rows": len(train_rows)}
        saved = classifier.save(paths.MODELS_DIR)
        write_json(paths.TRAIN_RUN_ID, {"run_id": run.info.run_id})
        write_json(paths.TRAIN_METRICS, metrics)
        mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
        for path in (*saved, paths.HYPERPARAMS):
            mlflow.log_artifact(str(path), "model")
        mlflow.log_artifact(str(paths.TRAINING_CURVE))
    log.info(
        "%s: validation UAR %.3f, accuracy %.3f (%s)",
        hp.kind,
        val["uar"],
        val["accuracy"],
        ", ".join(f"{k} {v:g}" for k, v in how.items()),
    )
    return metrics
