"""Fitting a kind as every stage and benchmark does: on training rows, every choice made on
validation rows (the calibration too), then (``train.refit_on_val``) the choice refitted on
both."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ser import EMOTIONS
from ser.config import Params
from ser.metrics import summary
from ser.models import kind_named
from ser.models.base import Fitted, Model, label_indices
from ser.models.calibration import Calibration, fit_calibration

log = logging.getLogger(__name__)


@dataclass
class Trained:
    """The model to save and test, and what validation said about it."""

    model: Model  # refitted on training + validation rows with train.refit_on_val
    fitted: Fitted  # the model validation chose, and what it saw
    val: dict[str, float]  # validation metrics of that choice, before any refit
    val_probabilities: np.ndarray  # of that choice on validation rows (calibration, monitor)
    how: dict[str, float]  # what was chosen (epochs, C, weight), rows of the refit
    calibration: Calibration  # fitted on val_probabilities: what train saves with the model


def train_model(train_rows: pd.DataFrame, val_rows: pd.DataFrame, params: Params) -> Trained:
    """Fit ``model.kind`` choosing on validation rows, calibrate it there, then refit on both
    if asked."""
    kind = kind_named(params.model.kind)
    fitted = kind.fit(train_rows, val_rows, params, ())
    probabilities = fitted.model.predict_proba(val_rows)
    predicted = [EMOTIONS[i] for i in probabilities.argmax(axis=1)]
    val = summary(val_rows["label"].tolist(), predicted)
    model, how = fitted.model, dict(fitted.how)
    if params.train.refit_on_val:
        rows = pd.concat([train_rows, val_rows], ignore_index=True)
        log.info("refitting %s on %d training + validation rows", kind.name, len(rows))
        model = kind.refit(rows, fitted)
        how["refit_rows"] = len(rows)
    calibration = fit_calibration(probabilities, label_indices(val_rows), params.calibration)
    return Trained(model, fitted, val, probabilities, how, calibration)
