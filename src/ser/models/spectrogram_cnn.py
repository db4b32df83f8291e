"""``spectrogram_cnn``: 2-D convolutions over each clip's log-mel frames (time x mel bands).

Blocks of ``convs_per_block`` x (conv 3x3, batch norm, ReLU) and a 2x2 max-pool, with
``channels`` filters per block; then the mean over bands and a mean + max over the
clip's own time steps, dropout and a softmax. Clips of one batch are padded to the
longest; every layer zeroes the padded steps again, so padding never changes a clip's
prediction. Bands are standardised with statistics of the training frames, inside the
network. Training only: batches of similar lengths, SpecAugment masks and mixup, built
in numpy from seeded generators (``TrainingBatches``); AdamW with a one-cycle schedule
(warm-up to ``peak_learning_rate``, cosine decay) for a fixed number of epochs.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import layers, ops

from ser import EMOTIONS, ORIGINAL
from ser.config import Params, SpectrogramCnnParams, SpectrogramCnnSpace
from ser.models.base import (
    FRAMES_INPUT,
    Callbacks,
    Fitted,
    Kind,
    Model,
    label_indices,
    one_hot,
    row_weights,
)
from ser.models.keras_io import save_keras
from ser.models.network import EpochLog, ValidationUAR, make_deterministic
from ser.ops.atomic import write_with
from ser.table.store import FRAMES_COLUMN

NETWORK_FILE = "spectrogram_cnn.keras"
BUCKET_BATCHES = 8
"""Training batches are cut from runs of this many batches sorted by length."""
PREDICT_BATCH = 64


@keras.saving.register_keras_serializable(package="ser")
class BandNormalisation(layers.Layer):
    """Standardises each mel band with the mean and spread of the training frames."""

    def __init__(self, mean: list[float], std: list[float], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.mean, self.std = list(map(float, mean)), list(map(float, std))

    def call(self, frames):
        return (frames - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)

    def get_config(self) -> dict:
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def _valid_steps(lengths, halvings: int):
    """Each clip's number of time steps after ``halvings`` "same" poolings by 2."""
    steps = lengths
    for _ in range(halvings):
        steps = (steps + 1) // 2
    return steps


def _time_mask(inputs, lengths, halvings: int):
    """1.0 on each clip's own time steps of ``inputs`` (batch, time, ...), 0.0 on padding."""
    positions = ops.arange(ops.shape(inputs)[1])
    mask = ops.cast(positions[None, :] < _valid_steps(lengths, halvings)[:, None], inputs.dtype)
    return ops.reshape(mask, (*ops.shape(mask), *([1] * (len(inputs.shape) - 2))))


@keras.saving.register_keras_serializable(package="ser")
class TimeMask(layers.Layer):
    """Zeroes the padded time steps of (batch, time, bands, channels) after ``halvings`` pools."""

    def __init__(self, halvings: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.halvings = halvings

    def call(self, inputs, lengths):
        return inputs * _time_mask(inputs, lengths, self.halvings)

    def get_config(self) -> dict:
        return {**super().get_config(), "halvings": self.halvings}


@keras.saving.register_keras_serializable(package="ser")
class MaskedMeanMaxPool(layers.Layer):
    """Mean over bands, then mean and max over each clip's own time steps: (batch, 2 x channels)."""

    def __init__(self, halvings: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.halvings = halvings

    def call(self, inputs, lengths):
        per_step = ops.mean(inputs, axis=2)  # (batch, time, channels)
        mask = _time_mask(per_step, lengths, self.halvings)
        steps = ops.maximum(ops.sum(mask, axis=1), 1.0)
        mean = ops.sum(per_step * mask, axis=1) / steps
        maximum = ops.max(ops.where(mask > 0, per_step, -1e9), axis=1)
        return ops.concatenate([mean, maximum], axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "halvings": self.halvings}


def build_spectrogram_cnn(
    n_mels: int, n_classes: int, hp: SpectrogramCnnParams, mean: np.ndarray, std: np.ndarray
) -> keras.Model:
    """The network: inputs ``frames`` (batch, time, n_mels) and ``lengths`` (batch,)."""
    frames = keras.Input(shape=(None, n_mels), name="frames")
    lengths = keras.Input(shape=(), dtype="int32", name="lengths")
    x = BandNormalisation(mean, std, name="band_normalisation")(frames)
    x = layers.Reshape((-1, n_mels, 1))(x)
    x = TimeMask(0)(x, lengths)
    for block, channels in enumerate(hp.channels):
        for _ in range(hp.convs_per_block):
            x = layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
            x = TimeMask(block)(x, lengths)
        x = layers.MaxPooling2D(2, padding="same")(x)
    x = MaskedMeanMaxPool(len(hp.channels))(x, lengths)
    x = layers.Dropout(hp.dropout)(x)
    outputs = layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model({"frames": frames, "lengths": lengths}, outputs, name="spectrogram_cnn")


def pad(frames: list[np.ndarray], fill: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Clips padded with ``fill`` to the longest, rounded up to ``multiple``; and their lengths."""
    lengths = np.array([len(f) for f in frames], np.int32)
    steps = multiple * math.ceil(max(lengths) / multiple)
    batch = np.tile(fill.astype(np.float32), (len(frames), steps, 1))
    for row, clip in enumerate(frames):
        batch[row, : len(clip)] = clip
    return batch, lengths


def spec_augment(
    batch: np.ndarray,
    lengths: np.ndarray,
    hp: SpectrogramCnnParams,
    fill: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """SpecAugment in place: band and time masks (filled with the band means) per clip."""
    n_mels = batch.shape[2]
    for row, length in enumerate(lengths):
        for _ in range(hp.freq_masks):
            width = int(rng.integers(0, min(hp.freq_mask_bands, n_mels) + 1))
            start = int(rng.integers(0, n_mels - width + 1))
            batch[row, :length, start : start + width] = fill[start : start + width]
        for _ in range(hp.time_masks):
            width = int(rng.integers(0, max(1, int(hp.time_mask_fraction * length)) + 1))
            start = int(rng.integers(0, length - width + 1))
            batch[row, start : start + width] = fill


class TrainingBatches:
    """Shuffled batches of clips of similar length, with SpecAugment and mixup.

    ``clips`` gives the recording each row comes from: a recording with augmented copies
    has several rows, of which each epoch draws one, so an epoch takes as many steps with
    copies as without. Each epoch's draw and order and each batch's masks and mixing come
    from generators seeded by (seed, epoch, batch): training is the same on every run.
    """

    def __init__(
        self,
        frames: list[np.ndarray],
        targets: np.ndarray,
        weights: np.ndarray,
        hp: SpectrogramCnnParams,
        fill: np.ndarray,
        seed: int,
        multiple: int,
        clips: np.ndarray,
    ) -> None:
        self.frames, self.targets, self.weights = frames, targets, weights
        self.hp, self.fill, self.seed, self.multiple = hp, fill, seed, multiple
        self.lengths = np.array([len(f) for f in frames])
        self.variants = list(
            pd.Series(np.arange(len(frames))).groupby(clips, sort=True).agg(np.array)
        )
        self.epoch = 0
        self.order = self._batches()

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        drawn = np.array([rows[rng.integers(len(rows))] for rows in self.variants])
        shuffled, size = drawn[rng.permutation(len(drawn))], self.hp.batch_size
        batches = []
        for start in range(0, len(shuffled), size * BUCKET_BATCHES):
            run = shuffled[start : start + size * BUCKET_BATCHES]
            run = run[np.argsort(self.lengths[run], kind="stable")]
            batches += [run[i : i + size] for i in range(0, len(run), size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        rows = self.order[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        batch, lengths = pad([self.frames[i] for i in rows], self.fill, self.multiple)
        spec_augment(batch, lengths, self.hp, self.fill, rng)
        targets, weights = self.targets[rows], self.weights[rows]
        if self.hp.mixup_alpha > 0:
            share = rng.beta(self.hp.mixup_alpha, self.hp.mixup_alpha, len(rows))
            partner = rng.permutation(len(rows))

            def blend(values: np.ndarray) -> np.ndarray:
                mixed = share.reshape(-1, *[1] * (values.ndim - 1)).astype(np.float32)
                return mixed * values + (1 - mixed) * values[partner]

            batch, targets, weights = blend(batch), blend(targets), blend(weights)
            lengths = np.maximum(lengths, lengths[partner])
        return (
            {"frames": batch, "lengths": lengths},
            targets.astype(np.float32),
            weights.astype(np.float32),
        )

    def next_epoch(self) -> None:
        self.epoch += 1
        self.order = self._batches()

    def dataset(self) -> tf.data.Dataset:
        """Every epoch's batches in turn, without end (``fit`` takes ``len(self)`` per epoch)."""
        n_mels = self.frames[0].shape[1]
        signature = (
            {
                "frames": tf.TensorSpec((None, None, n_mels), tf.float32),
                "lengths": tf.TensorSpec((None,), tf.int32),
            },
            tf.TensorSpec((None, self.targets.shape[1]), tf.float32),
            tf.TensorSpec((None,), tf.float32),
        )

        def one_epoch():
            for index in range(len(self)):
                yield self[index]
            self.next_epoch()

        return tf.data.Dataset.from_generator(one_epoch, output_signature=signature).repeat()


class SpectrogramCnn(Model):
    kind = "spectrogram_cnn"

    def __init__(self, network: keras.Model) -> None:
        self.network = network
        self.fill = np.array(network.get_layer("band_normalisation").mean, np.float32)
        self.multiple = 2 ** sum(isinstance(la, layers.MaxPooling2D) for la in network.layers)
        signature = [
            tf.TensorSpec((None, None, len(self.fill)), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ]  # one trace serves every batch size and clip length
        self.infer = tf.function(
            lambda frames, lengths: network({"frames": frames, "lengths": lengths}, training=False),
            input_signature=signature,
        )

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        """Clips batched by length; each clip's probabilities are those it has alone."""
        frames = rows[FRAMES_COLUMN].tolist() if len(rows) else []
        probabilities = np.empty((len(frames), len(EMOTIONS)), np.float32)
        order = np.argsort([len(f) for f in frames], kind="stable")
        for start in range(0, len(order), PREDICT_BATCH):
            chosen = order[start : start + PREDICT_BATCH]
            batch, lengths = pad([frames[i] for i in chosen], self.fill, self.multiple)
            probabilities[chosen] = self.infer(batch, lengths).numpy()
        return probabilities

    def training_batches(self, rows: pd.DataFrame, params: Params) -> TrainingBatches:
        labels = label_indices(rows)
        return TrainingBatches(
            rows[FRAMES_COLUMN].tolist(),
            one_hot(rows),
            row_weights(labels, params.train.class_weights),
            params.spectrogram_cnn,
            self.fill,
            params.train.seed,
            self.multiple,
            rows["path"].to_numpy(),
        )

    def save(self, directory: Path) -> list[Path]:
        path = directory / NETWORK_FILE
        write_with(path, lambda temporary: save_keras(self.network, temporary))
        return [path]

    @classmethod
    def load(cls, directory: Path) -> SpectrogramCnn:
        return cls(keras.models.load_model(directory / NETWORK_FILE, compile=False))


def training_rows(rows: pd.DataFrame, hp: SpectrogramCnnParams) -> pd.DataFrame:
    """The rows it trains on: original clips only, unless ``augmented_copies``."""
    if hp.augmented_copies:
        return rows
    return rows[rows["augmentation"] == ORIGINAL].reset_index(drop=True)


def train(rows: pd.DataFrame, params: Params, title: str, callbacks: Callbacks) -> tuple:
    """A fresh network, band statistics from ``rows``, trained for the fixed schedule."""
    make_deterministic(params.train.seed)
    hp = params.spectrogram_cnn
    rows = training_rows(rows, hp)
    stacked = np.concatenate(rows[FRAMES_COLUMN].tolist())
    mean, std = stacked.mean(axis=0), np.maximum(stacked.std(axis=0), 1e-3)
    model = SpectrogramCnn(build_spectrogram_cnn(stacked.shape[1], len(EMOTIONS), hp, mean, std))
    batches = model.training_batches(rows, params)
    steps = hp.epochs * len(batches)
    warmup = int(hp.warmup_fraction * steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        hp.learning_rate,
        decay_steps=steps - warmup,
        alpha=0.0,
        warmup_target=hp.peak_learning_rate,
        warmup_steps=warmup,
    )
    model.network.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=hp.weight_decay),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    progress = EpochLog(title, hp.epochs)
    model.network.fit(
        batches.dataset(),
        epochs=hp.epochs,
        steps_per_epoch=len(batches),
        shuffle=False,  # TrainingBatches shuffles, seeded
        verbose=0,
        callbacks=[*callbacks, progress],
    )
    return model, progress.rows


def fit(
    train_rows: pd.DataFrame, val_rows: pd.DataFrame, params: Params, callbacks: Callbacks = ()
) -> Fitted:
    """Trained on training rows for the fixed schedule; validation UAR is watched each epoch."""
    holder: list[SpectrogramCnn] = []
    watch = ValidationUAR(lambda: holder[0].predict_proba(val_rows), label_indices(val_rows))

    class Bind(keras.callbacks.Callback):  # the model exists only once training starts
        def on_train_begin(self, logs: dict | None = None) -> None:
            holder.append(SpectrogramCnn(self.model))

    model, curve = train(train_rows, params, "spectrogram_cnn fit", [Bind(), watch, *callbacks])
    return Fitted(model, params, curve, {"epochs": params.spectrogram_cnn.epochs})


def refit(rows: pd.DataFrame, fitted: Fitted) -> SpectrogramCnn:
    """The same schedule on more rows (training + validation speakers)."""
    model, _ = train(rows, fitted.params, "spectrogram_cnn refit", [])
    return model


def suggest(trial, space: SpectrogramCnnSpace, hp: SpectrogramCnnParams) -> SpectrogramCnnParams:
    """``hp`` with what ``space`` (``tune.space.spectrogram_cnn``) covers sampled by ``trial``."""
    base = trial.suggest_categorical("base_channels", space.base_channels)
    sampled = hp.model_copy(
        update={
            "channels": [base * 2**block for block in range(len(hp.channels))],
            "dropout": trial.suggest_float("dropout", *space.dropout),
            "learning_rate": trial.suggest_float("learning_rate", *space.learning_rate, log=True),
            "mixup_alpha": trial.suggest_float("mixup_alpha", *space.mixup_alpha),
            "freq_mask_bands": trial.suggest_categorical("freq_mask_bands", space.freq_mask_bands),
            "time_mask_fraction": trial.suggest_float(
                "time_mask_fraction", *space.time_mask_fraction, log=True
            ),
        }
    )
    return sampled.model_copy(
        update={"peak_learning_rate": max(sampled.peak_learning_rate, sampled.learning_rate)}
    )


KIND = Kind(
    name="spectrogram_cnn",
    section="spectrogram_cnn",
    inputs=frozenset({FRAMES_INPUT}),
    fit=fit,
    refit=refit,
    load=SpectrogramCnn.load,
    suggest=suggest,
)

KINDS = (KIND,)
