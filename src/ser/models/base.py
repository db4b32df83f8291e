"""What every model kind provides, and the training helpers the network kinds share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel
from sklearn.preprocessing import OneHotEncoder
from sklearn.utils.class_weight import compute_class_weight

from ser import EMOTIONS
from ser.config import Params
from ser.errors import SerError

CLIP_INPUT, FRAMES_INPUT = "clip", "frames"
"""What a kind reads of each row: the clip-feature vector, the log-mel frames, or both."""


class ModelError(SerError, ValueError):
    """A saved model, or the hyperparameters chosen for one, cannot be loaded as it is;
    the message names the file."""


class Model(ABC):
    """A fitted model: class probabilities (``EMOTIONS`` order) for rows of the feature table."""

    kind: ClassVar[str]

    @abstractmethod
    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        """One row of probabilities per row of ``rows``."""

    @abstractmethod
    def save(self, directory: Path) -> list[Path]:
        """Write the model into ``directory``; return the files written."""


@dataclass
class Fitted:
    """A model fitted on training rows with every choice made on validation rows."""

    model: Model
    params: Params  # as fitted: the linear kinds' C is the one validation chose
    curve: list[dict[str, float]]  # one row per epoch (or C candidate): what validation saw
    how: dict[str, float] = field(default_factory=dict)  # what was chosen (epochs, C, weight)
    parts: dict[str, Fitted] = field(default_factory=dict)  # a combination's fitted members


Callbacks = Sequence[object]
"""Keras callbacks given to a network's ``fit`` (the tuner's pruning); other kinds ignore them."""


@dataclass(frozen=True)
class Kind:
    """One model kind: its params section, what it reads, and how to fit, refit and load it.

    ``fit`` takes training rows, validation rows, params and extra keras callbacks
    (used by the tuner's pruning); ``refit`` fits what validation chose on more rows;
    ``suggest(trial, space, section)`` samples the kind's section from its search space
    ``tune.space.<section>`` (None: not tunable by Optuna).
    """

    name: str
    section: str
    inputs: frozenset[str]
    fit: Callable[[pd.DataFrame, pd.DataFrame, Params, Callbacks], Fitted]
    refit: Callable[[pd.DataFrame, Fitted], Model]
    load: Callable[[Path], Model]
    suggest: Callable[[object, BaseModel, BaseModel], BaseModel] | None = None


def label_encoder() -> OneHotEncoder:
    """One-hot encoder over the seven labels, in a fixed order whatever the corpus."""
    encoder = OneHotEncoder(categories=[list(EMOTIONS)], sparse_output=False)
    return encoder.fit(np.array(EMOTIONS).reshape(-1, 1))


def label_indices(rows: pd.DataFrame) -> np.ndarray:
    """Each row's label as its index in ``EMOTIONS``."""
    return rows["label"].map(EMOTIONS.index).to_numpy(dtype=np.int64)


def one_hot(rows: pd.DataFrame) -> np.ndarray:
    return label_encoder().transform(rows[["label"]].to_numpy()).astype(np.float32)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights of the classes present in ``labels`` (encoded indices)."""
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


def row_weights(labels: np.ndarray, balanced: bool) -> np.ndarray:
    """Per-row loss weights: balanced over the classes present, or all ones."""
    if not balanced:
        return np.ones(len(labels), np.float32)
    weights = class_weights(labels)
    return np.array([weights[c] for c in labels], np.float32)


def best_epochs(curve: list[dict[str, float]], monitor: str) -> int:
    """How many epochs the network had when ``monitor`` was at its best."""
    values = [row[monitor] for row in curve]
    best = np.argmax(values) if monitor == "val_uar" else np.argmin(values)
    return int(best) + 1


def section_of(kind: Kind, params: Params) -> BaseModel:
    """The params section of ``kind``'s hyperparameters."""
    return getattr(params, kind.section)
