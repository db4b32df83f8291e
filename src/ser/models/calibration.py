"""Calibrated probabilities: one temperature fitted on validation speakers, saved with the model.

A model's probabilities p become softmax(log p / T). T > 1 softens an over-confident
model, T < 1 sharpens a timid one; the ranking of the classes, so the label, never
changes. T is fitted by minimising the negative log-likelihood of the validation
speakers' labels under the probabilities of the model that never saw them (fitted on
training speakers only, before any ``train.refit_on_val``). The optional ``uncertain``
answer uses a confidence below which validation clips were right too rarely.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from ser.config import CalibrationParams
from ser.metrics import expected_calibration_error

TEMPERATURE_BOUNDS = (0.05, 20.0)
PROBABILITY_FLOOR = 1e-12
"""Probabilities are floored before the log: an averaged or clipped 0 stays finite."""


@dataclass(frozen=True)
class Calibration:
    """The temperature and the optional ``uncertain`` threshold of a saved classifier."""

    temperature: float = 1.0
    uncertain_below: float | None = None  # None: always answer the top emotion

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """The calibrated probabilities of each row."""
        return scaled(probabilities, self.temperature)

    def is_uncertain(self, calibrated: np.ndarray) -> bool:
        """Whether a row's top calibrated probability is below the ``uncertain`` threshold."""
        return self.uncertain_below is not None and float(calibrated.max()) < self.uncertain_below

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """log p in float64, p floored at ``PROBABILITY_FLOOR``."""
    return np.log(np.clip(probabilities.astype(np.float64), PROBABILITY_FLOOR, None))


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / temperature), row by row."""
    return np.exp(log_softmax(log_probabilities(probabilities) / temperature, axis=1))


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true label) of the rows."""
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(log_probabilities(picked)))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (class indices)."""
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(scaled(probabilities, np.exp(log_t)), labels),
        bounds=np.log(TEMPERATURE_BOUNDS),
        method="bounded",
    )
    return float(np.exp(result.x))


def uncertain_threshold(calibrated: np.ndarray, labels: np.ndarray, min_accuracy: float) -> float:
    """The lowest top-probability t such that the clips answered at t or above are right at
    least ``min_accuracy`` of the time (1.0, every answer uncertain, when no t reaches it)."""
    confidence = calibrated.max(axis=1)
    correct = calibrated.argmax(axis=1) == labels
    order = np.argsort(-confidence, kind="stable")
    accuracy = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    reaching = np.flatnonzero(accuracy >= min_accuracy)
    return float(confidence[order][reaching[-1]]) if len(reaching) else 1.0


def fit_calibration(
    probabilities: np.ndarray, labels: np.ndarray, params: CalibrationParams
) -> Calibration:
    """Temperature (and, with ``calibration.uncertain_min_accuracy``, the uncertain threshold)
    from the probabilities of validation rows and their labels (class indices)."""
    if not params.enabled:
        return Calibration()
    min_accuracy = params.uncertain_min_accuracy
    temperature = fit_temperature(probabilities, labels)
    below = (
        None
        if min_accuracy is None
        else uncertain_threshold(scaled(probabilities, temperature), labels, min_accuracy)
    )
    return Calibration(temperature, below)


def calibration_metrics(
    probabilities: np.ndarray, labels: np.ndarray, calibration: Calibration
) -> dict[str, float]:
    """The temperature, and the validation ECE before and after it (after is in-sample: the
    temperature was fitted on these rows; evaluate reports the test speakers')."""
    metrics = {
        "temperature": calibration.temperature,
        "val_ece_uncalibrated": expected_calibration_error(probabilities, labels),
        "val_ece_calibrated": expected_calibration_error(calibration.apply(probabilities), labels),
    }
    if calibration.uncertain_below is not None:
        metrics["uncertain_below"] = calibration.uncertain_below
    return metrics
