"""Linear baselines on the CNN's features: multinomial logistic regression and a linear SVM.

Both are fitted on the preprocessed training rows (``fit_preprocessing``), saved and predicted through the
same ``Classifier`` as the CNN. C is ``model.C``, or the value of ``model.C_grid`` with
the best validation UAR: the test speakers are never seen here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from ser.classifier import Classifier, fit_preprocessing, label_encoder
from ser.config import ModelParams, Params
from ser.dataset import feature_columns, matrix
from ser.metrics import uar

LOGREG_MAX_ITER = 3000
CALIBRATION_FOLDS = 3


def make_estimator(
    hp: ModelParams, balanced: bool, seed: int, speakers: np.ndarray
) -> ClassifierMixin:
    """An unfitted estimator of kind ``hp.kind`` with regularisation ``hp.C``.

    The linear SVM's scores become probabilities by sigmoid calibration on out-of-fold
    scores, its folds split by training speaker (``speakers``, one per training row), so
    the calibration, like the test, sees voices the SVM did not.
    """
    class_weight = "balanced" if balanced else None
    if hp.kind == "logreg":  # lbfgs fits the multinomial loss
        return LogisticRegression(C=hp.C, class_weight=class_weight, max_iter=LOGREG_MAX_ITER)
    if hp.kind != "linear_svm":
        raise ValueError(f"model.kind {hp.kind!r} is not a linear baseline")
    groups = np.unique(speakers)
    if len(groups) < 2:
        raise ValueError("linear_svm calibrates on held-out training speakers: it needs two")
    folds = GroupKFold(n_splits=min(CALIBRATION_FOLDS, len(groups)))
    return CalibratedClassifierCV(
        LinearSVC(C=hp.C, class_weight=class_weight, random_state=seed),
        method="sigmoid",
        cv=list(folds.split(speakers, groups=speakers)),
        ensemble=False,  # one SVM fitted on every training row
    )


def scores(classifier: Classifier, rows: pd.DataFrame, prefix: str = "") -> dict[str, float]:
    """Log loss, accuracy and UAR of ``rows``, named like the CNN's epoch logs."""
    probabilities = classifier.predict_proba(matrix(rows, classifier.feature_names))
    truth = rows["label"].map(classifier.classes.index).to_numpy()
    predicted = probabilities.argmax(axis=1)
    return {
        f"{prefix}loss": float(
            log_loss(truth, probabilities, labels=range(len(classifier.classes)))
        ),
        f"{prefix}accuracy": float(np.mean(predicted == truth)),
        f"{prefix}uar": uar(truth, predicted),
    }


def fit_estimator(
    rows: pd.DataFrame, hp: ModelParams, params: Params, preprocessing: Pipeline | None = None
) -> Classifier:
    """One estimator of kind ``hp.kind`` with ``hp.C`` fitted on ``rows``, with the
    preprocessing given (already fitted on ``rows``) or fitted here."""
    columns = feature_columns(rows)
    values = matrix(rows, columns)
    encoder = label_encoder()
    labels = encoder.transform(rows[["label"]].to_numpy()).argmax(axis=1)
    if preprocessing is None:
        preprocessing = fit_preprocessing(values, labels, hp)
    speakers = rows["speaker"].to_numpy()
    estimator = make_estimator(hp, params.train.class_weights, params.train.seed, speakers)
    classifier = Classifier(
        estimator, preprocessing, encoder, columns, params.audio, params.features
    )
    with threadpool_limits(1):  # threaded BLAS made lbfgs 10-100x slower on 2 busy cores
        estimator.fit(classifier.prepare(values), labels)
    return classifier


def fit_linear(
    train_rows: pd.DataFrame, val_rows: pd.DataFrame, hp: ModelParams, params: Params
) -> tuple[Classifier, ModelParams, list[dict[str, float]]]:
    """Fit one estimator per C candidate on training rows; keep the best on validation rows.

    Returns the classifier, ``hp`` with the C it uses, and one row per candidate with
    the columns of the CNN's training curve (``epoch`` numbers the candidates, in
    increasing C; ties go to the smaller C, the stronger regularisation).
    """
    labels = label_encoder().transform(train_rows[["label"]].to_numpy()).argmax(axis=1)
    values = matrix(train_rows, feature_columns(train_rows))
    preprocessing = fit_preprocessing(values, labels, hp)  # the same for every C
    best: tuple[Classifier, ModelParams, float] | None = None
    curve = []
    for step, c in enumerate(sorted(hp.C_grid) or [hp.C], start=1):
        candidate = hp.model_copy(update={"C": c})
        classifier = fit_estimator(train_rows, candidate, params, preprocessing)
        row = {
            "epoch": step,
            **scores(classifier, train_rows),
            **scores(classifier, val_rows, "val_"),
            "C": c,
        }
        curve.append(row)
        if best is None or row["val_uar"] > best[2]:
            best = (classifier, candidate, row["val_uar"])
    return best[0], best[1], curve
