"""evaluate stage: the one look at the test speakers."""

from __future__ import annotations

import logging

import mlflow

from ser import paths
from ser.config import Params
from ser.figures import plot_confusion, plot_reliability
from ser.metrics import (
    confusion,
    expected_calibration_error,
    per_class,
    reliability_curve,
    slice_metrics,
    summary,
)
from ser.models.base import FRAMES_INPUT, label_indices
from ser.models.bundle import Classifier
from ser.ops.atomic import read_json, write_json, write_with
from ser.ops.tracking import stage_run
from ser.serve.gate import scoped
from ser.table.store import load_rows, select

log = logging.getLogger(__name__)


def run(params: Params) -> dict[str, float]:
    """Score the saved model on the test speakers and add the results to the training run."""
    classifier = Classifier.load(paths.MODELS_DIR)
    rows = select(load_rows(with_frames=FRAMES_INPUT in classifier.inputs), "test")
    uncalibrated = classifier.model.predict_proba(rows)
    probabilities = classifier.calibration.apply(uncalibrated)
    predicted = [classifier.classes[i] for i in probabilities.argmax(axis=1)]
    truth = rows["label"].tolist()
    labels = [c for c in classifier.classes if c in set(truth) | set(predicted)]

    truth_indices = label_indices(rows)
    headline = summary(truth, predicted) | {
        "ece": expected_calibration_error(probabilities, truth_indices),
        "ece_uncalibrated": expected_calibration_error(uncalibrated, truth_indices),
    }
    # per-speaker normalisation uses the test speakers' own statistics: never the headline
    scope = "test_speaker_normalised" if classifier.speaker_normalised else "test"
    counts = confusion(truth, predicted, labels)
    details = {
        scope: headline,
        "speaker_norm": classifier.features.speaker_norm,
        "speakers": sorted(rows["speaker"].unique().tolist()),
        "per_class": per_class(truth, predicted, labels),
        "slices": slice_metrics(rows, predicted, params.evaluate.slices),
        "confusion": {"labels": labels, "counts": counts.tolist()},
    }
    write_json(paths.METRICS, {scope: headline})
    write_json(paths.EVALUATION, details)
    predictions = rows[["path", "speaker", "label"]].rename(columns={"label": "actual"})
    predictions = predictions.assign(predicted=predicted, confidence=probabilities.max(axis=1))
    write_with(paths.PREDICTIONS, lambda path: predictions.to_csv(path, index=False))
    title = f"Test speakers: UAR {headline['uar']:.1%}, accuracy {headline['accuracy']:.1%}"
    if scope != "test":
        title += "\nnormalised with the test speakers' own statistics"
    plot_confusion(counts, labels, title, paths.CONFUSION_PNG)
    curve = reliability_curve(uncalibrated, probabilities, truth_indices)
    write_with(paths.RELIABILITY, lambda path: curve.to_csv(path, index=False))
    plot_reliability(
        curve,
        f"Test speakers: ECE {headline['ece_uncalibrated']:.3f} → {headline['ece']:.3f} "
        f"(temperature {classifier.calibration.temperature:.2f})",
        paths.RELIABILITY_PNG,
    )

    run_id = read_json(paths.TRAIN_RUN_ID)["run_id"] if paths.TRAIN_RUN_ID.is_file() else None
    with stage_run("evaluate", params, run_id=run_id):
        mlflow.set_tag("features.speaker_norm", classifier.features.speaker_norm)
        mlflow.log_metrics(scoped(scope, headline))
        mlflow.log_metrics(
            {f"{scope}_recall_{k}": v["recall"] for k, v in details["per_class"].items()}
        )
        for path in (
            paths.METRICS,
            paths.EVALUATION,
            paths.CONFUSION_PNG,
            paths.PREDICTIONS,
            paths.RELIABILITY,
            paths.RELIABILITY_PNG,
        ):
            mlflow.log_artifact(str(path), "evaluation")
    log.info(
        "test UAR %.3f, accuracy %.3f, macro-F1 %.3f, ECE %.3f (uncalibrated %.3f) on %d clips",
        headline["uar"],
        headline["accuracy"],
        headline["macro_f1"],
        headline["ece"],
        headline["ece_uncalibrated"],
        headline["clips"],
    )
    return headline
