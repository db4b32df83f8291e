"""``seed_cnn``: the original design's Conv1D network over the clip-feature vector.

The layer stack is exactly as designed (``build_seed_cnn``); early stopping and the
learning-rate schedule watch the validation speakers (``train.monitor``), and a refit
replays the chosen epochs with their learning rates on more rows.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import layers

from ser import EMOTIONS
from ser.config import Params, SeedCnnParams, SeedCnnSpace
from ser.models.base import (
    CLIP_INPUT,
    Callbacks,
    Fitted,
    Kind,
    Model,
    best_epochs,
    class_weights,
    label_indices,
    one_hot,
    row_weights,
)
from ser.models.clip_inputs import ClipInputs, fit_clip_inputs
from ser.models.keras_io import save_keras
from ser.models.network import EpochLog, ValidationUAR, make_deterministic
from ser.ops.atomic import write_with

NETWORK_FILE = "model.keras"


def build_seed_cnn(n_features: int, n_classes: int, hp: SeedCnnParams) -> keras.Model:
    """Conv1D stack over the feature vector as designed, ending in a softmax.

    Block 1: three convs (strides 1, 2, 2); block 2: two (1, 2); block 3: one (2);
    each block ends in max-pooling (stride 1) and batch normalisation. Two optional
    regularisers leave the layer stack as designed: ``hp.input_noise`` adds Gaussian
    noise to the inputs while training only, ``hp.l2`` penalises the dense weights.
    """
    first, second, third = hp.filters
    noise = [layers.GaussianNoise(hp.input_noise)] if hp.input_noise > 0 else []
    dense = dict(
        activation="relu", kernel_regularizer=keras.regularizers.L2(hp.l2) if hp.l2 else None
    )
    conv = dict(kernel_size=hp.kernel_size, padding="same", activation="relu")
    pool = dict(pool_size=hp.pool_size, strides=1, padding="same")
    return keras.Sequential(
        [
            keras.Input(shape=(n_features, 1)),
            *noise,
            layers.Conv1D(first, strides=1, **conv),
            layers.Conv1D(first, strides=2, **conv),
            layers.Conv1D(first, strides=2, **conv),
            layers.MaxPooling1D(**pool),
            layers.BatchNormalization(),
            layers.Conv1D(second, strides=1, **conv),
            layers.Conv1D(second, strides=2, **conv),
            layers.MaxPooling1D(**pool),
            layers.BatchNormalization(),
            layers.Conv1D(third, strides=2, **conv),
            layers.MaxPooling1D(**pool),
            layers.BatchNormalization(),
            layers.Dropout(hp.dropout),
            layers.Flatten(),
            layers.Dense(hp.dense_units[0], **dense),
            layers.Dense(hp.dense_units[1], **dense),
            layers.Dense(n_classes, activation="softmax"),
        ],
        name="seed_cnn",
    )


class SeedCnn(Model):
    kind = "seed_cnn"

    def __init__(self, network: keras.Model, inputs: ClipInputs) -> None:
        self.network, self.inputs = network, inputs

    def prepare(self, rows: pd.DataFrame) -> np.ndarray:
        """Preprocessed features with the Conv1D channel axis."""
        return self.inputs.transform(rows)[..., np.newaxis]

    def predict_proba(self, rows: pd.DataFrame, batch_size: int = 256) -> np.ndarray:
        if len(rows) == 0:
            return np.empty((0, len(EMOTIONS)), np.float32)
        values = self.prepare(rows)
        if len(values) <= batch_size:  # a compiled call, without predict()'s per-call set-up
            return np.asarray(self.network.predict_on_batch(values))
        return self.network.predict(values, batch_size=batch_size, verbose=0)

    def save(self, directory: Path) -> list[Path]:
        path = directory / NETWORK_FILE
        write_with(path, lambda temporary: save_keras(self.network, temporary))
        return [path, self.inputs.save(directory)]

    @classmethod
    def load(cls, directory: Path) -> SeedCnn:
        network = keras.models.load_model(directory / NETWORK_FILE, compile=False)
        return cls(network, ClipInputs.load(directory))


def training_data(
    x: np.ndarray, y: np.ndarray, hp: SeedCnnParams, params: Params
) -> dict[str, object]:
    """Keras ``fit`` arguments for the training rows, shuffled every epoch.

    With ``train.mixup_alpha`` > 0, each batch is mixed with a shuffled copy of itself
    (mixup: inputs, one-hot labels and class weights blended with a Beta(alpha, alpha)
    share per row), a regulariser that suits small corpora of few speakers.
    """
    t = params.train
    weights = class_weights(y.argmax(axis=1)) if t.class_weights else None
    if t.mixup_alpha == 0:
        return {
            "x": x,
            "y": y,
            "batch_size": hp.batch_size,
            "class_weight": weights,
            "shuffle": True,
        }
    per_row = row_weights(y.argmax(axis=1), t.class_weights)

    def mix(inputs: tf.Tensor, targets: tf.Tensor, weights_per_row: tf.Tensor) -> tuple:
        rows = tf.shape(inputs)[0]
        first = tf.random.gamma([rows], t.mixup_alpha)
        share = first / (first + tf.random.gamma([rows], t.mixup_alpha))
        partner = tf.random.shuffle(tf.range(rows))

        def blend(values: tf.Tensor) -> tf.Tensor:
            mixed = tf.reshape(share, [-1] + [1] * (len(values.shape) - 1))
            return mixed * values + (1 - mixed) * tf.gather(values, partner)

        return blend(inputs), blend(targets), blend(weights_per_row)

    rows = tf.data.Dataset.from_tensor_slices((x, y, per_row))
    batches = rows.shuffle(len(x), seed=t.seed).batch(hp.batch_size).map(mix)
    return {"x": batches, "shuffle": False}  # the dataset reshuffles itself every epoch


def untrained(rows: pd.DataFrame, params: Params) -> SeedCnn:
    """Preprocessing fitted on ``rows`` and a freshly initialised, compiled seed CNN."""
    make_deterministic(params.train.seed)
    hp = params.seed_cnn
    inputs = fit_clip_inputs(rows, params.preprocessing)
    network = build_seed_cnn(inputs.width, len(EMOTIONS), hp)
    network.compile(
        optimizer=keras.optimizers.Adam(hp.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return SeedCnn(network, inputs)


def fit(
    train_rows: pd.DataFrame, val_rows: pd.DataFrame, params: Params, callbacks: Callbacks = ()
) -> Fitted:
    """Fit on training rows; early stopping on validation rows restores the best weights."""
    model = untrained(train_rows, params)
    x_val, y_val = model.prepare(val_rows), one_hot(val_rows)
    t = params.train
    mode = "max" if t.monitor == "val_uar" else "min"
    progress = EpochLog("seed_cnn fit", t.epochs)
    model.network.fit(
        **training_data(model.prepare(train_rows), one_hot(train_rows), params.seed_cnn, params),
        validation_data=(x_val, y_val),
        epochs=t.epochs,
        verbose=0,
        callbacks=[
            ValidationUAR(lambda: model.network(x_val, training=False), label_indices(val_rows)),
            keras.callbacks.ReduceLROnPlateau(
                monitor=t.monitor,
                mode=mode,
                factor=t.reduce_lr_factor,
                patience=t.reduce_lr_patience,
            ),
            keras.callbacks.EarlyStopping(
                monitor=t.monitor,
                mode=mode,
                patience=t.early_stopping_patience,
                restore_best_weights=True,
            ),
            progress,
            *callbacks,
        ],
    )
    best = best_epochs(progress.rows, t.monitor)
    return Fitted(
        model, params, progress.rows, {"epochs_run": len(progress.rows), "best_epoch": best}
    )


def refit(rows: pd.DataFrame, fitted: Fitted) -> SeedCnn:
    """A fresh network fitted on ``rows`` for the chosen epochs, replaying their learning rates."""
    params = fitted.params
    model = untrained(rows, params)
    epochs = int(fitted.how["best_epoch"])
    rates = [row["learning_rate"] for row in fitted.curve[:epochs]]
    model.network.fit(
        **training_data(model.prepare(rows), one_hot(rows), params.seed_cnn, params),
        epochs=epochs,
        verbose=0,
        callbacks=[
            keras.callbacks.LearningRateScheduler(lambda epoch, _: float(rates[epoch])),
            EpochLog("seed_cnn refit", epochs),
        ],
    )
    return model


def suggest(trial, space: SeedCnnSpace, hp: SeedCnnParams) -> SeedCnnParams:
    """``hp`` with what ``space`` (``tune.space.seed_cnn``) covers sampled by ``trial``."""
    choice = trial.suggest_categorical
    optional = {}
    if space.input_noise is not None:
        optional["input_noise"] = trial.suggest_float("input_noise", *space.input_noise)
    if space.l2 is not None:
        optional["l2"] = trial.suggest_float("l2", *space.l2, log=True)
    return hp.model_copy(
        update={
            **optional,
            "filters": (
                choice("filters_1", space.filters_1),
                choice("filters_2", space.filters_2),
                choice("filters_3", space.filters_3),
            ),
            "kernel_size": choice("kernel_size", space.kernel_size),
            "pool_size": choice("pool_size", space.pool_size),
            "dense_units": (choice("dense_1", space.dense_1), choice("dense_2", space.dense_2)),
            "dropout": trial.suggest_float("dropout", *space.dropout),
            "learning_rate": trial.suggest_float("learning_rate", *space.learning_rate, log=True),
            "batch_size": choice("batch_size", space.batch_size),
        }
    )


KIND = Kind(
    name="seed_cnn",
    section="seed_cnn",
    inputs=frozenset({CLIP_INPUT}),
    fit=fit,
    refit=refit,
    load=SeedCnn.load,
    suggest=suggest,
)

KINDS = (KIND,)
