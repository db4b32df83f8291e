"""``logreg`` and ``linear_svm``: linear baselines on the preprocessed clip-feature vector.

C is ``linear.C``, or the value of ``linear.C_grid`` with the best validation UAR: the
test speakers are never seen here. The linear SVM's scores become probabilities by
sigmoid calibration on out-of-fold scores, folds split by training speaker.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import GroupKFold
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from ser import EMOTIONS
from ser.config import Params
from ser.metrics import uar
from ser.models.base import CLIP_INPUT, Callbacks, Fitted, Kind, Model, label_indices
from ser.models.clip_inputs import ClipInputs, fit_clip_inputs
from ser.ops.atomic import write_with

ESTIMATOR_FILE = "model.joblib"
LOGREG_MAX_ITER = 3000
CALIBRATION_FOLDS = 3


def make_estimator(
    kind: str, c: float, balanced: bool, seed: int, speakers: np.ndarray
) -> ClassifierMixin:
    """An unfitted estimator of ``kind`` with regularisation ``c``.

    The linear SVM's calibration folds split by training speaker (``speakers``, one per
    training row), so the calibration, like the test, sees voices the SVM did not.
    """
    class_weight = "balanced" if balanced else None
    if kind == "logreg":  # lbfgs fits the multinomial loss
        return LogisticRegression(C=c, class_weight=class_weight, max_iter=LOGREG_MAX_ITER)
    groups = np.unique(speakers)
    if len(groups) < 2:
        raise ValueError("linear_svm calibrates on held-out training speakers: it needs two")
    folds = GroupKFold(n_splits=min(CALIBRATION_FOLDS, len(groups)))
    return CalibratedClassifierCV(
        LinearSVC(C=c, class_weight=class_weight, random_state=seed),
        method="sigmoid",
        cv=list(folds.split(speakers, groups=speakers)),
        ensemble=False,  # one SVM fitted on every training row
    )


class Linear(Model):
    def __init__(self, kind: str, estimator: ClassifierMixin, inputs: ClipInputs) -> None:
        self.kind, self.estimator, self.inputs = kind, estimator, inputs

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        """Columns of the classes seen in training, zeros for the others."""
        probabilities = np.zeros((len(rows), len(EMOTIONS)), np.float32)
        if len(rows):
            values = self.inputs.transform(rows)
            probabilities[:, self.estimator.classes_] = self.estimator.predict_proba(values)
        return probabilities

    def save(self, directory: Path) -> list[Path]:
        path = directory / ESTIMATOR_FILE
        write_with(path, lambda temporary: joblib.dump((self.kind, self.estimator), temporary))
        return [path, self.inputs.save(directory)]

    @classmethod
    def load(cls, directory: Path) -> Linear:
        kind, estimator = joblib.load(directory / ESTIMATOR_FILE)
        return cls(kind, estimator, ClipInputs.load(directory))


def fit_estimator(
    kind: str, rows: pd.DataFrame, c: float, params: Params, inputs: ClipInputs | None = None
) -> Linear:
    """One estimator of ``kind`` with C = ``c`` fitted on ``rows``, with the preprocessing
    given (already fitted on ``rows``) or fitted here."""
    inputs = inputs or fit_clip_inputs(rows, params.preprocessing)
    t = params.train
    estimator = make_estimator(kind, c, t.class_weights, t.seed, rows["speaker"].to_numpy())
    with threadpool_limits(1):  # threaded BLAS made lbfgs 10-100x slower on 2 busy cores
        estimator.fit(inputs.transform(rows), label_indices(rows))
    return Linear(kind, estimator, inputs)


def scores(model: Model, rows: pd.DataFrame, prefix: str = "") -> dict[str, float]:
    """Log loss, accuracy and UAR of ``rows``, named like the networks' epoch logs."""
    probabilities = model.predict_proba(rows)
    truth, predicted = label_indices(rows), probabilities.argmax(axis=1)
    return {
        f"{prefix}loss": float(log_loss(truth, probabilities, labels=range(len(EMOTIONS)))),
        f"{prefix}accuracy": float(np.mean(predicted == truth)),
        f"{prefix}uar": uar(truth, predicted),
    }


def fitter(kind: str):
    """``fit`` of one linear kind: one estimator per C candidate, the best on validation.

    The curve has one row per candidate, in increasing C (``epoch`` numbers them, as for the networks); ties
    go to the smaller C, the stronger regularisation.
    """

    def fit(
        train_rows: pd.DataFrame, val_rows: pd.DataFrame, params: Params, _: Callbacks = ()
    ) -> Fitted:
        inputs = fit_clip_inputs(train_rows, params.preprocessing)  # the same for every C
        best: tuple[Linear, float, float] | None = None
        curve = []
        for step, c in enumerate(sorted(params.linear.C_grid) or [params.linear.C], start=1):
            model = fit_estimator(kind, train_rows, c, params, inputs)
            row = {
                "epoch": step,
                "C": c,
                **scores(model, train_rows),
                **scores(model, val_rows, "val_"),
            }
            curve.append(row)
            if best is None or row["val_uar"] > best[2]:
                best = (model, c, row["val_uar"])
        model, c, _ = best
        chosen = params.model_copy(update={"linear": params.linear.model_copy(update={"C": c})})
        return Fitted(model, chosen, curve, {"C": c})

    return fit


def refitter(kind: str):
    """``refit`` of one linear kind: the chosen C on more rows."""

    def refit(rows: pd.DataFrame, fitted: Fitted) -> Linear:
        return fit_estimator(kind, rows, fitted.how["C"], fitted.params)

    return refit


LOGREG, LINEAR_SVM = (
    Kind(
        name=name,
        section="linear",
        inputs=frozenset({CLIP_INPUT}),
        fit=fitter(name),
        refit=refitter(name),
        load=Linear.load,
    )
    for name in ("logreg", "linear_svm")
)
KINDS = (LOGREG, LINEAR_SVM)
