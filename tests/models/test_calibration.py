"""Temperature scaling: it recovers a known over-confidence, keeps every label, and the
uncertain threshold is the lowest confidence that validation clips justify."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from ser.config import CalibrationParams
from ser.metrics import expected_calibration_error
from ser.models.calibration import (
    Calibration,
    calibration_metrics,
    fit_calibration,
    fit_temperature,
    scaled,
    uncertain_threshold,
)


def overconfident(rows: int = 4000, power: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z), and the probabilities of a model that says softmax(power·z)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (rows, 7))
    truth = softmax(logits, axis=1)
    labels = np.array([rng.choice(7, p=p) for p in truth])
    return softmax(power * logits, axis=1), labels


def test_the_fitted_temperature_undoes_a_known_overconfidence():
    probabilities, labels = overconfident(power=3.0)
    assert fit_temperature(probabilities, labels) == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(probabilities, labels)
    after = expected_calibration_error(scaled(probabilities, 3.0), labels)
    assert before > 0.1 and after < 0.03


def test_scaling_keeps_the_label_and_one_is_the_identity():
    probabilities, _ = overconfident(rows=50)
    for temperature in (0.5, 2.0):
        np.testing.assert_array_equal(
            scaled(probabilities, temperature).argmax(1), probabilities.argmax(1)
        )
    np.testing.assert_allclose(scaled(probabilities, 1.0), probabilities, atol=1e-9)
    np.testing.assert_allclose(scaled(probabilities, 2.0).sum(1), 1)


def test_uncertain_threshold_is_the_lowest_confidence_reaching_the_accuracy():
    calibrated = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 0, 1])  # right, right, wrong, right, wrong
    assert uncertain_threshold(calibrated, labels, 1.0) == 0.8
    assert uncertain_threshold(calibrated, labels, 0.75) == 0.6  # 3 of the top 4
    assert uncertain_threshold(calibrated[2:3], labels[2:3], 0.5) == 1.0  # none: all uncertain
    calibration = Calibration(1.0, 0.8)
    assert calibration.is_uncertain(calibrated[2]) and not calibration.is_uncertain(calibrated[0])
    assert not Calibration().is_uncertain(calibrated[4])


def test_fit_calibration_follows_its_params():
    probabilities, labels = overconfident(rows=1000)
    assert fit_calibration(probabilities, labels, CalibrationParams(enabled=False)) == Calibration()
    fitted = fit_calibration(probabilities, labels, CalibrationParams(uncertain_min_accuracy=0.9))
    assert fitted.temperature > 2 and 0 < fitted.uncertain_below < 1
    assert fit_calibration(probabilities, labels, CalibrationParams()).uncertain_below is None
    metrics = calibration_metrics(probabilities, labels, fitted)
    assert metrics["val_ece_calibrated"] < metrics["val_ece_uncalibrated"]
    assert set(metrics) == {
        "temperature",
        "val_ece_uncalibrated",
        "val_ece_calibrated",
        "uncertain_below",
    }
