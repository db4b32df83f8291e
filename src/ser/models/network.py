"""What the network kinds share in training: determinism, validation UAR each epoch, an
epoch log, and pruning by the tuner. Importing this module loads Keras and TensorFlow."""

from __future__ import annotations

import logging
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from ser.metrics import uar

log = logging.getLogger(__name__)


def make_deterministic(seed: int) -> None:
    """Same seed and data give the same weights on CPU."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class ValidationUAR(keras.callbacks.Callback):
    """Adds ``val_uar`` to each epoch's logs so callbacks after it can monitor it."""

    def __init__(self, predict: Callable[[], np.ndarray], labels: np.ndarray) -> None:
        super().__init__()
        self.predict, self.labels = predict, labels

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["val_uar"] = uar(self.labels, np.asarray(self.predict()).argmax(axis=1))


class EpochLog(keras.callbacks.Callback):
    """Records each epoch's metrics and the learning rate it trained with; logs progress."""

    def __init__(self, title: str, epochs: int) -> None:
        super().__init__()
        self.title, self.epochs = title, epochs
        self.rows: list[dict[str, float]] = []
        self.rate = float("nan")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        # read here: ReduceLROnPlateau lowers the rate at the end of an epoch, before us
        self.rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["learning_rate"] = self.rate
        self.rows.append(row)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
        log.info("%s epoch %d/%d: %s", self.title, epoch + 1, self.epochs, shown)


class PruningCallback(keras.callbacks.Callback):
    """Reports validation UAR to an Optuna trial each epoch; stops training when it is pruned."""

    def __init__(self, trial: object) -> None:  # an optuna.Trial
        super().__init__()
        self.trial = trial
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.trial.report(float((logs or {})["val_uar"]), step=epoch + 1)
        if self.trial.should_prune():
            self.pruned_at = epoch + 1
            self.model.stop_training = True
