"""The evaluate stage: test speakers only, per-class and per-slice metrics, confusion matrix,
calibration before and after."""

from __future__ import annotations

import csv
import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import (
    PNG_MAGIC,
    declared_sections,
    feature_table,
    make_params,
    sections_read,
    write_feature_files,
)

from ser import paths
from ser.config import ModelParams
from ser.metrics import expected_calibration_error
from ser.models.base import label_indices
from ser.models.bundle import Classifier
from ser.ops.atomic import write_json
from ser.ops.tracking import stage_run
from ser.stages.evaluate import run


@pytest.fixture(params=[ModelParams().kind, "logreg"])
def evaluated(request, mlflow_workspace, trained_models):
    """A workspace with features, a model of the default kind or of a clip kind, and its
    train run; evaluate has run. A clip kind's workspace has no frames file."""
    kind = request.param
    params = make_params()
    table = feature_table(params, splits={"train": 2, "val": 1, "test": 3}, takes=3)
    write_feature_files(table)
    if kind == "logreg":
        paths.FRAMES_FILE.unlink()  # the model reads no frames: evaluate must not load them
    shutil.copytree(trained_models[kind], paths.MODELS_DIR)
    with stage_run("train", params) as train_run:
        pass
    write_json(paths.TRAIN_RUN_ID, {"run_id": train_run.info.run_id})
    with sections_read() as read:
        headline = run(params)
    assert read <= declared_sections("evaluate")
    return table, headline, train_run.info.run_id


def test_only_test_rows_are_scored(evaluated):
    table, headline, _ = evaluated
    test_rows = table[table["split"] == "test"]
    assert headline["clips"] == len(test_rows) == 3 * 7 * 3
    details = json.loads(paths.EVALUATION.read_text())
    assert details["speakers"] == sorted(test_rows["speaker"].unique())
    with paths.PREDICTIONS.open() as handle:
        predictions = list(csv.DictReader(handle))
    assert list(predictions[0]) == ["path", "speaker", "actual", "predicted", "confidence"]
    assert [row["path"] for row in predictions] == test_rows["path"].tolist()
    assert all(0 < float(row["confidence"]) <= 1 for row in predictions)


def test_reports_hold_headline_per_class_slices_and_confusion(evaluated):
    _, headline, _ = evaluated
    assert json.loads(paths.METRICS.read_text()) == {"test": headline}
    assert set(headline) == {"accuracy", "uar", "macro_f1", "clips", "ece", "ece_uncalibrated"}
    details = json.loads(paths.EVALUATION.read_text())
    labels = details["confusion"]["labels"]
    counts = np.array(details["confusion"]["counts"])
    assert counts.shape == (len(labels), len(labels))
    assert counts.sum() == headline["clips"]
    assert np.trace(counts) / counts.sum() == pytest.approx(headline["accuracy"])
    assert list(details["per_class"]) == labels
    assert sum(c["support"] for c in details["per_class"].values()) == headline["clips"]
    assert set(details["slices"]) == {"corpus", "sex", "intensity"}
    assert set(details["slices"]["sex"]) == {"male", "female"}
    summary = {k: headline[k] for k in ("accuracy", "uar", "macro_f1", "clips")}
    assert details["slices"]["corpus"]["ravdess"] == summary
    assert paths.CONFUSION_PNG.read_bytes().startswith(PNG_MAGIC)


def test_calibration_is_reported_before_and_after_with_a_reliability_diagram(evaluated):
    table, headline, _ = evaluated
    classifier = Classifier.load(paths.MODELS_DIR)
    test_rows = table[table["split"] == "test"].reset_index(drop=True)
    labels = label_indices(test_rows)
    raw = classifier.model.predict_proba(test_rows)
    assert headline["ece_uncalibrated"] == pytest.approx(expected_calibration_error(raw, labels))
    calibrated = classifier.calibration.apply(raw)
    assert headline["ece"] == pytest.approx(expected_calibration_error(calibrated, labels))
    curve = pd.read_csv(paths.RELIABILITY)
    assert list(curve.columns) == [
        "confidence",
        "perfect",
        "uncalibrated",
        "calibrated",
        "clips_uncalibrated",
        "clips_calibrated",
    ]
    assert len(curve) == 10 and curve["clips_calibrated"].sum() == headline["clips"]
    assert paths.RELIABILITY_PNG.read_bytes().startswith(PNG_MAGIC)


def test_test_metrics_join_the_training_run(evaluated, mlflow_workspace):
    _, headline, train_run_id = evaluated
    client = mlflow.MlflowClient(f"sqlite:///{mlflow_workspace / 'mlflow.db'}")
    logged = client.get_run(train_run_id).data
    assert logged.metrics["test_uar"] == pytest.approx(headline["uar"])
    assert logged.metrics["test_clips"] == headline["clips"]
    assert logged.metrics["test_ece"] == pytest.approx(headline["ece"])
    assert any(key.startswith("test_recall_") for key in logged.metrics)
    artifacts = {a.path for a in client.list_artifacts(train_run_id, "evaluation")}
    assert "evaluation/metrics.json" in artifacts


def test_predictions_are_the_saved_models(evaluated):
    table, _, _ = evaluated
    classifier = Classifier.load(paths.MODELS_DIR)
    test_rows = table[(table["split"] == "test")].reset_index(drop=True)
    predictions = pd.read_csv(paths.PREDICTIONS)
    assert predictions["predicted"].tolist() == classifier.predict(test_rows)
    np.testing.assert_allclose(
        predictions["confidence"], classifier.predict_proba(test_rows).max(axis=1), rtol=1e-6
    )


@pytest.mark.parametrize("kind", ["spectrogram_cnn", "fusion"])
def test_a_model_that_reads_frames_needs_the_frames_file(mlflow_workspace, trained_models, kind):
    write_feature_files(feature_table(make_params()))
    paths.FRAMES_FILE.unlink()
    shutil.copytree(trained_models[kind], paths.MODELS_DIR)
    with pytest.raises(FileNotFoundError, match=r"frames\.npz: .*run the preprocess stage"):
        run(make_params())


@pytest.mark.parametrize(
    ("kind", "scope"),
    [
        ("logreg", "test_speaker_normalised"),
        ("fusion", "test_speaker_normalised"),
        ("spectrogram_cnn", "test"),
    ],
)
def test_only_clip_features_normalised_per_speaker_move_the_headline_aside(
    mlflow_workspace, trained_models, kind, scope
):
    write_feature_files(feature_table(make_params()))
    shutil.copytree(trained_models[kind], paths.MODELS_DIR)
    config_path = paths.MODELS_DIR / "classifier.json"
    config = json.loads(config_path.read_text())
    config["features"]["speaker_norm"] = "per_speaker"
    config_path.write_text(json.dumps(config))
    headline = run(make_params())
    assert json.loads(paths.METRICS.read_text()) == {scope: headline}
    assert json.loads(paths.EVALUATION.read_text())[scope] == headline


def test_without_a_model_it_says_what_to_run(mlflow_workspace):
    with pytest.raises(FileNotFoundError, match="run the train stage"):
        run(make_params())
