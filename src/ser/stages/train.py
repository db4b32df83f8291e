"""train stage: fit ``model.kind`` on training speakers; every choice made on validation speakers.

What a kind chooses on validation (epochs, C, the fusion weights) and how is the kind's
own (``ser.models``). With ``train.refit_on_val`` the choice is then fitted again on
training and validation speakers together; the validation metrics reported are those
of the choice.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import mlflow
import pandas as pd

from ser import paths
from ser.config import Params
from ser.models import kind_named
from ser.models.base import FRAMES_INPUT, ModelError, label_indices, section_of
from ser.models.bundle import Classifier
from ser.models.calibration import calibration_metrics
from ser.models.fitting import train_model
from ser.ops.atomic import read_json, write_json, write_with
from ser.ops.tracking import model_tags, stage_run
from ser.serve.inference_log import write_reference
from ser.serve.registry import inherit_test_metrics, register_trained_model
from ser.table.store import load_rows, select

log = logging.getLogger(__name__)


def chosen_params(params: Params, path: Path = paths.HYPERPARAMS) -> Params:
    """``params`` with the kind and hyperparameters the tune stage chose."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no chosen hyperparameters (run the tune stage)")
    chosen = read_json(path)
    try:
        kind = kind_named(chosen["kind"])
        section = section_of(kind, params).model_validate(chosen[kind.section])
    except (KeyError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        raise ModelError(
            f"{path}: not hyperparameters this version of ser reads ({error}); "
            "run the tune stage again"
        ) from None
    model = params.model.model_copy(update={"kind": kind.name})
    return params.model_copy(update={"model": model, kind.section: section})


def write_curve(target: Path, rows: list[dict[str, float]]) -> None:
    """The training curve as a CSV for `dvc plots`, one row per epoch (or C candidate)."""

    def write(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    write_with(target, write)


def curve_metrics(row: dict[str, float]) -> dict[str, float]:
    """One curve row as MLflow metrics at its step, apart from the run's own metrics.

    A network's row is an epoch (``epoch.loss``, ``epoch.val_uar``, …), a linear kind's a C
    candidate (``C_search.C``, ``C_search.val_uar``): the run's ``val_uar``, ``C`` and the
    rest are the chosen model's, under the names of ``reports/train.json``.
    """
    prefix = "C_search." if "C" in row else "epoch."
    return {f"{prefix}{k}": v for k, v in row.items() if k != "epoch"}


def run(params: Params) -> dict[str, float]:
    """Train the chosen kind on the training speakers, save ``models/`` and validation metrics.

    The MLflow run gets the model as an MLflow Model, registered as a new version of
    ``mlflow.registered_model`` with alias ``candidate`` (``ser promote`` judges it), and
    the test metrics of the same model on the same features when an earlier run has them
    (DVC then skips ``evaluate``, whose inputs are unchanged).
    """
    params = chosen_params(params)
    kind = kind_named(params.model.kind)
    features = load_rows(with_frames=FRAMES_INPUT in kind.inputs)
    train_rows = select(features, "train", with_augmented=True)
    val_rows = select(features, "val")
    with stage_run("train", params) as run:
        trained = train_model(train_rows, val_rows, params)
        for row in trained.fitted.curve:
            mlflow.log_metrics(curve_metrics(row), step=int(row["epoch"]))
        write_curve(paths.TRAINING_CURVE, trained.fitted.curve)
        chosen = section_of(kind, trained.fitted.params)
        mlflow.log_params({f"chosen.{k}": v for k, v in chosen.model_dump().items()})
        metrics = {
            **{f"val_{k}": v for k, v in trained.val.items()},
            **trained.how,
            "train_rows": len(train_rows),
        }
        calibration = trained.calibration
        metrics |= calibration_metrics(
            trained.val_probabilities, label_indices(val_rows), calibration
        )
        classifier = Classifier(
            kind.name,
            trained.model,
            params.audio,
            params.features,
            params.frames,
            params.speech,
            calibration,
        )
        classifier.save(paths.MODELS_DIR)
        write_reference(
            pd.concat([select(features, "train"), val_rows]),
            val_rows,
            calibration.apply(trained.val_probabilities),
            classifier,
        )
        write_json(paths.TRAIN_METRICS, metrics)
        mlflow.log_metrics(metrics)
        tags = model_tags()
        mlflow.set_tags(tags)
        mlflow.log_artifact(str(paths.HYPERPARAMS), "tuning")
        mlflow.log_artifact(str(paths.TRAINING_CURVE))
        register_trained_model(paths.MODELS_DIR, params, run.info.run_id, metrics, tags)
        inherit_test_metrics(tags, params.mlflow.experiment)
    log.info(
        "%s: validation UAR %.3f, accuracy %.3f (%s)",
        kind.name,
        trained.val["uar"],
        trained.val["accuracy"],
        ", ".join(f"{k} {v:g}" for k, v in trained.how.items()),
    )
    return metrics
