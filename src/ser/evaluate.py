"""evaluate stage: the one look at the test speakers."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd

from ser import paths
from ser.artifacts import read_json, write_json, write_with
from ser.classifier import Classifier
from ser.config import Params
from ser.dataset import load_rows, select
from ser.metrics import confusion, per_class, summary
from ser.models.base import FRAMES
from ser.tracking import stage_run

log = logging.getLogger(__name__)


def slice_metrics(rows: pd.DataFrame, predicted: list[str], columns: list[str]) -> dict:
    """The summary metrics within each value of each slice column (e.g. sex=female)."""
    frame = rows.assign(predicted=predicted)
    return {
        column: {
            str(value): summary(group["label"].tolist(), group["predicted"].tolist())
            for value, group in frame.groupby(column)
        }
        for column in columns
    }


def plot_confusion(matrix_counts: np.ndarray, labels: list[str], title: str, target: Path) -> None:
    """Row-normalised confusion matrix (recall on the diagonal) with counts, as a PNG."""
    totals = matrix_counts.sum(axis=1, keepdims=True)
    shares = np.divide(
        matrix_counts, totals, out=np.zeros_like(matrix_counts, float), where=totals > 0
    )
    figure, axes = plt.subplots(figsize=(7, 6))
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix_counts):
        colour = "white" if shares[i, j] > 0.5 else "black"
        axes.text(
            j, i, f"{count}\n{shares[i, j]:.0%}", ha="center", va="center", fontsize=8, color=colour
        )
    axes.set(
        xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true"
    )
    axes.set_xticklabels(labels, rotation=45, ha="right")
    axes.set_yticklabels(labels)
    axes.set_title(title)
    figure.tight_layout()
    write_with(target, lambda path: figure.savefig(path, format="png", dpi=120))
    plt.close(figure)


def run(params: Params) -> dict[str, float]:
    """Score the saved model on the test speakers and add the results to the training run."""
    classifier = Classifier.load(paths.MODELS_DIR)
    rows = select(load_rows(with_frames=FRAMES in classifier.inputs), "test")
    probabilities = classifier.predict_proba(rows)
    predicted = [classifier.classes[i] for i in probabilities.argmax(axis=1)]
    truth = rows["label"].tolist()
    labels = [c for c in classifier.classes if c in set(truth) | set(predicted)]

    headline = summary(truth, predicted)
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

    run_id = read_json(paths.TRAIN_RUN_ID)["run_id"] if paths.TRAIN_RUN_ID.is_file() else None
    with stage_run("evaluate", params, run_id=run_id):
        mlflow.set_tag("features.speaker_norm", classifier.features.speaker_norm)
        mlflow.log_metrics({f"{scope}_{k}": v for k, v in headline.items()})
        mlflow.log_metrics(
            {f"{scope}_recall_{k}": v["recall"] for k, v in details["per_class"].items()}
        )
        for path in (paths.METRICS, paths.EVALUATION, paths.CONFUSION_PNG, paths.PREDICTIONS):
            mlflow.log_artifact(str(path), "evaluation")
    log.info("test UAR %.3f, accuracy %.3f, macro-F1 %.3f on %d clips",
             headline["uar"], headline["accuracy"], headline["macro_f1"], headline["clips"])  # fmt: skip
    return headline
