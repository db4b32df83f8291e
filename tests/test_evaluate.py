"""The evaluate stage: test speakers only, per-class and per-slice metrics, confusion matrix."""

from __future__ import annotations

import csv
import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import feature_table, make_params

from ser import paths
from ser.artifacts import write_json, write_parquet
from ser.evaluate import plot_confusion, run, slice_metrics
from ser.tracking import stage_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_slice_metrics_score_each_group_separately():
    rows = pd.DataFrame(
        {
            "label": ["sad", "sad", "angry", "angry", "sad", "angry"],
            "sex": ["male", "male", "male", "male", "female", "female"],
            "intensity": ["normal", "strong", "normal", "strong", "normal", "normal"],
        }
    )
    predicted = ["sad", "angry", "angry", "angry", "angry", "sad"]
    result = slice_metrics(rows, predicted, ["sex", "intensity"])
    assert set(result) == {"sex", "intensity"}
    assert set(result["sex"]) == {"male", "female"}
    male, female = result["sex"]["male"], result["sex"]["female"]
    assert (male["clips"], male["accuracy"], male["uar"]) == (4, 0.75, 0.75)
    assert (female["clips"], female["accuracy"], female["uar"]) == (2, 0.0, 0.0)
    assert result["intensity"]["strong"]["clips"] == 2
    assert result["intensity"]["strong"]["uar"] == pytest.approx(0.5)
    assert sum(group["clips"] for group in result["intensity"].values()) == len(rows)


def test_confusion_plot_is_a_png(tmp_path):
    counts = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])  # a label nobody has: no division by 0
    target = tmp_path / "reports" / "confusion.png"
    plot_confusion(counts, ["sad", "angry", "happy"], "title", target)
    assert target.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in target.parent.iterdir()] == ["confusion.png"]


@pytest.fixture
def evaluated(mlflow_workspace, trained_model_dir):
    """A workspace with features and a trained model whose train run exists; evaluate has run."""
    params = make_params()
    table = feature_table(params, splits={"train": 2, "val": 1, "test": 3}, takes=3)
    write_parquet(paths.FEATURES, table)
    shutil.copytree(trained_model_dir, paths.MODELS_DIR)
    with stage_run("train", params) as train_run:
        pass
    write_json(paths.TRAIN_RUN_ID, {"run_id": train_run.info.run_id})
    headline = run(params)
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
    assert set(headline) == {"accuracy", "uar", "macro_f1", "clips"}
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
    assert details["slices"]["corpus"]["ravdess"] == headline
    assert paths.CONFUSION_PNG.read_bytes().startswith(PNG_MAGIC)


def test_test_metrics_join_the_training_run(evaluated, mlflow_workspace):
    _, headline, train_run_id = evaluated
    client = mlflow.MlflowClient(f"sqlite:///{mlflow_workspace / 'mlflow.db'}")
    logged = client.get_run(train_run_id).data
    assert logged.metrics["test_uar"] == pytest.approx(headline["uar"])
    assert logged.metrics["test_clips"] == headline["clips"]
    assert any(key.startswith("test_recall_") for key in logged.metrics)
    artifacts = {a.path for a in client.list_artifacts(train_run_id, "evaluation")}
    assert "evaluation/metrics.json" in artifacts


def test_without_a_model_it_says_what_to_run(mlflow_workspace):
    with pytest.raises(FileNotFoundError, match="run the train stage"):
        run(make_params())
