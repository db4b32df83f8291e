"""The train stage: the chosen kind fitted on training speakers, choices made on validation ones."""

from __future__ import annotations

import csv
import json
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import (
    declared_sections,
    feature_table,
    kind_params,
    make_params,
    sections_read,
    write_feature_files,
)

from ser import EMOTIONS, paths
from ser.metrics import summary
from ser.models import fitting, kind_named
from ser.models.base import label_indices, section_of
from ser.models.calibration import fit_calibration
from ser.models.fitting import train_model
from ser.ops.atomic import write_json, write_parquet
from ser.ops.tracking import FEATURES_TAG, MODELS_TAG, content_sha256
from ser.signal.speech import ClipStats
from ser.stages.train import chosen_params, run
from ser.table.store import FRAMES_COLUMN, select

# two epochs of every network, without (FAST) and with (REFIT) the refit on train + val rows
FAST = {"train": {"epochs": 2, "refit_on_val": False}, "spectrogram_cnn": {"epochs": 2}}
REFIT = {"train": {"epochs": 2, "refit_on_val": True}, "spectrogram_cnn": {"epochs": 2}}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return feature_table(make_params())


@pytest.fixture(scope="module")
def train_rows(table) -> pd.DataFrame:
    return select(table, "train", with_augmented=True)


@pytest.fixture(scope="module")
def val_rows(table) -> pd.DataFrame:
    return select(table, "val")


def val_summary(model, val_rows: pd.DataFrame) -> dict[str, float]:
    predicted = [EMOTIONS[i] for i in model.predict_proba(val_rows).argmax(axis=1)]
    return summary(val_rows["label"].tolist(), predicted)


def band_mean(model) -> np.ndarray:
    """The per-band mean a spectrogram CNN standardises its input with."""
    return np.array(model.network.get_layer("band_normalisation").mean)


def frames_mean(rows: pd.DataFrame) -> np.ndarray:
    """The per-band mean of the frames the spectrogram CNN trains on: with
    ``augmented_copies`` (the default), every row's, copies included."""
    assert make_params().spectrogram_cnn.augmented_copies
    return np.concatenate(rows[FRAMES_COLUMN].tolist()).mean(axis=0)


CHOSEN_SECTIONS = {
    "spectrogram_cnn": {"channels": [4, 8], "dropout": 0.11},
    "seed_cnn": {"filters": [4, 4, 4], "dropout": 0.22},
    "logreg": {"C": 0.5},
    "linear_svm": {"C": 0.25},
    "fusion": {"weights": [0.3]},
}


@pytest.mark.parametrize("kind", list(CHOSEN_SECTIONS))
def test_chosen_params_read_the_kind_and_its_section(tmp_path, kind):
    params = make_params()  # model.kind is the default
    registered = kind_named(kind)
    base = section_of(registered, params)
    section = type(base).model_validate({**base.model_dump(), **CHOSEN_SECTIONS[kind]})
    assert section != base
    path = tmp_path / "hyperparams.json"
    write_json(path, {"kind": kind, registered.section: section.model_dump(mode="json")})
    chosen = chosen_params(params, path)
    assert chosen.model.kind == kind
    assert section_of(registered, chosen) == section
    others = set(type(params).model_fields) - {"model", registered.section}
    assert all(getattr(chosen, name) == getattr(params, name) for name in others)


@pytest.mark.parametrize(
    "old",
    [
        {"kind": "cnn", "filters": [64, 128, 256], "dropout": 0.5, "C": 0.01},
        {"kind": "logreg", "filters": [64, 128, 256], "C": 0.01, "C_grid": []},
    ],
)
def test_hyperparameters_of_an_older_version_say_what_to_run(tmp_path, old):
    path = tmp_path / "hyperparams.json"
    write_json(path, old)  # the flat model section tune wrote before model kinds had sections
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: .*run the tune stage"):
        chosen_params(make_params(), path)


def test_missing_hyperparameters_say_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"hyperparams\.json: .*run the tune stage"):
        chosen_params(make_params(), tmp_path / "hyperparams.json")


def test_a_clip_kind_reports_the_validation_metrics_of_its_choice(train_rows, val_rows):
    params = kind_params("logreg", {**FAST, "linear": {"C_grid": [0.0001, 1.0]}})
    trained = train_model(train_rows, val_rows, params)
    assert trained.model is trained.fitted.model
    assert [row["C"] for row in trained.fitted.curve] == [0.0001, 1.0]
    best = max(trained.fitted.curve, key=lambda row: row["val_uar"])
    assert trained.how == {"C": best["C"]}  # the first of equals: the smaller C
    assert trained.fitted.params.linear == params.linear.model_copy(update={"C": best["C"]})
    assert trained.val == val_summary(trained.model, val_rows)
    assert trained.val["uar"] == pytest.approx(best["val_uar"])
    assert trained.val["clips"] == len(val_rows)


def test_the_spectrogram_cnn_trains_its_fixed_schedule(train_rows, val_rows):
    trained = train_model(train_rows, val_rows, kind_params("spectrogram_cnn", FAST))
    assert trained.model is trained.fitted.model
    assert trained.how == {"epochs": 2}
    curve = trained.fitted.curve
    assert [row["epoch"] for row in curve] == [1, 2]
    assert {"loss", "accuracy", "val_uar", "learning_rate"} <= set(curve[0])
    assert trained.val == val_summary(trained.model, val_rows)
    assert trained.val["uar"] == pytest.approx(curve[-1]["val_uar"])
    np.testing.assert_allclose(band_mean(trained.model), frames_mean(train_rows), rtol=1e-4)


def test_refit_on_val_refits_a_clip_kind_on_train_and_val_rows(train_rows, val_rows):
    chosen = train_model(train_rows, val_rows, kind_params("logreg", FAST))
    refitted = train_model(train_rows, val_rows, kind_params("logreg", REFIT))
    both = len(train_rows) + len(val_rows)
    assert refitted.val == chosen.val  # validation speaks for the choice, not for the refit
    assert refitted.how == {**chosen.how, "refit_rows": both}
    assert refitted.model is not refitted.fitted.model
    assert chosen.model.inputs.preprocessing["scale"].n_samples_seen_ == len(train_rows)
    assert refitted.model.inputs.preprocessing["scale"].n_samples_seen_ == both


def test_refit_on_val_refits_the_spectrogram_cnn_on_train_and_val_rows(train_rows, val_rows):
    trained = train_model(train_rows, val_rows, kind_params("spectrogram_cnn", REFIT))
    both = pd.concat([train_rows, val_rows], ignore_index=True)
    assert trained.how == {"epochs": 2, "refit_rows": len(both)}
    assert trained.val == val_summary(trained.fitted.model, val_rows)
    np.testing.assert_allclose(band_mean(trained.fitted.model), frames_mean(train_rows), rtol=1e-4)
    np.testing.assert_allclose(band_mean(trained.model), frames_mean(both), rtol=1e-4)


STAGE_FILES = {
    "spectrogram_cnn": {"classifier.json", "spectrogram_cnn.keras"},
    "logreg": {"classifier.json", "model.joblib", "preprocessing.joblib"},
    "fusion": {
        "classifier.json",
        "fusion.json",
        "spectrogram_cnn/spectrogram_cnn.keras",
        "logreg/model.joblib",
        "logreg/preprocessing.joblib",
    },
}


@pytest.mark.parametrize("kind", list(STAGE_FILES))
def test_stage_saves_model_metrics_curve_and_its_mlflow_run(mlflow_workspace, kind):
    params = make_params({"train": {"epochs": 2}, "spectrogram_cnn": {"epochs": 2}})
    table = feature_table(params)
    write_feature_files(table)
    if kind == "logreg":  # it reads no frames: the stage must not need them
        paths.FRAMES_FILE.unlink()
    registered = kind_named(kind)
    section = section_of(registered, params)
    write_json(
        paths.HYPERPARAMS, {"kind": kind, registered.section: section.model_dump(mode="json")}
    )
    with sections_read() as read:
        metrics = run(params)  # params.model.kind is the default: the kind is hyperparams.json's
    assert read <= declared_sections("train")

    assert metrics["train_rows"] == 4 * 7 * 2 * 2  # speakers x labels x takes x (1 + noise copy)
    assert metrics["refit_rows"] == metrics["train_rows"] + 2 * 7 * 2
    assert metrics["val_clips"] == 2 * 7 * 2
    assert json.loads(paths.TRAIN_METRICS.read_text()) == metrics
    saved = {
        str(p.relative_to(paths.MODELS_DIR)) for p in paths.MODELS_DIR.rglob("*") if p.is_file()
    }
    assert saved == STAGE_FILES[kind]
    assert json.loads((paths.MODELS_DIR / "classifier.json").read_text())["kind"] == kind
    with paths.TRAINING_CURVE.open() as handle:
        curve = list(csv.DictReader(handle))
    steps = len(params.linear.C_grid) if kind == "logreg" else 2
    assert [row["epoch"] for row in curve] == [str(step) for step in range(1, steps + 1)]
    assert {"loss", "accuracy", "val_uar"} <= set(curve[0])

    client = mlflow.MlflowClient(f"sqlite:///{mlflow_workspace / 'mlflow.db'}")
    (logged,) = training_runs(client)
    run_id = logged.info.run_id
    assert logged.data.tags["ser.stage"] == "train"
    assert logged.data.tags[MODELS_TAG] == content_sha256(paths.MODELS_DIR)
    assert logged.data.tags[FEATURES_TAG] == content_sha256(paths.FEATURES, paths.FRAMES_FILE)
    assert {k: logged.data.metrics[k] for k in metrics} == pytest.approx(metrics)  # DVC's names
    prefix = "C_search." if kind == "logreg" else "epoch."  # C candidates are not epochs
    for column in set(curve[0]) - {"epoch"}:
        history = client.get_metric_history(run_id, prefix + column)
        assert [m.step for m in history] == list(range(1, steps + 1)), column
        assert [m.value for m in history] == pytest.approx([float(r[column]) for r in curve])
    logged_chosen = {k for k in logged.data.params if k.startswith("chosen.")}
    assert logged_chosen == {f"chosen.{name}" for name in type(section).model_fields}
    if kind == "logreg":  # C is the grid value validation chose
        assert logged.data.params["chosen.C"] == str(metrics["C"])
        assert metrics["C"] in params.linear.C_grid
    assert {"tuning/hyperparams.json", "training_curve.csv"} <= {
        a.path for a in client.list_artifacts(run_id, "tuning")
    } | {a.path for a in client.list_artifacts(run_id)}

    (found,) = client.search_model_versions(f"name = '{params.mlflow.registered_model}'")
    version = client.get_model_version(found.name, found.version)  # a search has no aliases
    assert version.run_id == run_id
    assert version.aliases == ["candidate"]
    assert version.tags["kind"] == kind
    assert version.tags["dvc.exp_name"] == "workspace"
    assert version.tags[MODELS_TAG] == logged.data.tags[MODELS_TAG]
    logged_model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged_model.source_run_id == run_id
    assert logged_model.name == "model"


def training_runs(client: mlflow.MlflowClient) -> list:
    """The train stage's runs of experiment ``ser``, newest first."""
    experiment = client.get_experiment_by_name("ser")
    return client.search_runs(
        [experiment.experiment_id],
        "tags.`ser.stage` = 'train'",
        order_by=["attributes.start_time DESC"],
    )


def test_a_c_search_is_logged_apart_from_the_chosen_values(mlflow_workspace):
    params = kind_params("logreg", {"linear": {"C_grid": [0.0001, 0.01, 1.0]}})
    write_feature_files(feature_table(params))
    write_json(paths.HYPERPARAMS, {"kind": "logreg", "linear": params.linear.model_dump()})
    metrics = run(params)
    client = mlflow.MlflowClient(f"sqlite:///{mlflow_workspace / 'mlflow.db'}")
    (logged,) = training_runs(client)
    assert logged.data.metrics["C_search.C"] == 1.0  # the last candidate, under its own name
    assert len(client.get_metric_history(logged.info.run_id, "C_search.val_uar")) == 3
    assert logged.data.metrics["val_uar"] == pytest.approx(metrics["val_uar"])
    assert logged.data.metrics["C"] == metrics["C"] != 1.0
    assert logged.data.params["chosen.C"] == str(metrics["C"])


def test_the_temperature_is_fitted_on_validation_rows_and_the_reference_written(
    mlflow_workspace, monkeypatch
):
    params = kind_params("logreg", {"train": {"refit_on_val": True}})
    table = feature_table(params)
    write_feature_files(table)
    write_json(paths.HYPERPARAMS, {"kind": "logreg", "linear": params.linear.model_dump()})
    clips = table[table["augmentation"] == "none"]
    stats = ClipStats(3.0, 16_000, 1, -30.0, 0.0, 0.5, 1.5, 35.0, -20.0).as_dict()
    write_parquet(paths.CLIP_STATS, pd.DataFrame([{"path": p, **stats} for p in clips["path"]]))
    seen = {}

    def recording(probabilities, labels, section):
        seen.update(probabilities=probabilities, labels=labels)
        return fit_calibration(probabilities, labels, section)

    monkeypatch.setattr(fitting, "fit_calibration", recording)
    metrics = run(params)

    val_rows = select(table, "val")
    np.testing.assert_array_equal(seen["labels"], label_indices(val_rows))  # validation only
    assert seen["probabilities"].shape == (len(val_rows), len(EMOTIONS))
    saved = json.loads((paths.MODELS_DIR / "classifier.json").read_text())["calibration"]
    assert saved["temperature"] == metrics["temperature"] > 0
    assert {"val_ece_uncalibrated", "val_ece_calibrated"} <= set(metrics)
    reference = pd.read_parquet(paths.MONITOR_REFERENCE)
    expected = clips[clips["split"].isin(["train", "val"])]
    assert len(reference) == len(expected)  # training and validation speakers, originals
    answered = reference["label"].notna()
    assert answered.sum() == len(val_rows)  # the answers are validation speakers' only
    assert set(reference.loc[answered, "label"]) <= set(EMOTIONS)
    assert (reference["snr_db"] == 35.0).all()


def test_a_model_trained_again_gets_the_test_metrics_of_the_same_bytes(mlflow_workspace):
    """DVC skips evaluate when a new training run makes the bytes of a scored model."""
    params = kind_params("logreg")
    write_feature_files(feature_table(params))
    write_json(paths.HYPERPARAMS, {"kind": "logreg", "linear": params.linear.model_dump()})
    run(params)
    client = mlflow.MlflowClient(f"sqlite:///{mlflow_workspace / 'mlflow.db'}")
    (first,) = training_runs(client)
    assert not any(name.startswith("test_") for name in first.data.metrics)  # not scored yet
    run(params)
    second = training_runs(client)[0]
    assert not any(name.startswith("test_") for name in second.data.metrics)

    client.log_metric(first.info.run_id, "test_uar", 0.61)  # as evaluate logs it
    client.log_metric(first.info.run_id, "test_recall_sad", 0.5)
    run(params)
    third = training_runs(client)[0]
    assert third.data.tags[MODELS_TAG] == first.data.tags[MODELS_TAG]
    assert {k: v for k, v in third.data.metrics.items() if k.startswith("test_")} == {
        "test_uar": 0.61,
        "test_recall_sad": 0.5,
    }
    assert third.data.tags["ser.test_metrics_from"] == first.info.run_id

    write_feature_files(feature_table(params, seed=1))  # other features: another model
    run(params)
    other = training_runs(client)[0]
    assert other.data.tags[MODELS_TAG] != first.data.tags[MODELS_TAG]
    assert "test_uar" not in other.data.metrics
