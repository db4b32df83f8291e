"""Linear baselines: estimators, C chosen on validation speakers, and the same train → evaluate → predict path."""

from __future__ import annotations

import csv
import io
import json

import mlflow
import numpy as np
import pytest
from conftest import feature_table, make_params, tone, write_audio
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression

from ser import EMOTIONS, evaluate, paths, train
from ser.artifacts import write_json, write_parquet
from ser.baselines import fit_linear, make_estimator
from ser.classifier import ESTIMATOR_FILE, NETWORK_FILE, Classifier
from ser.config import ModelParams
from ser.dataset import matrix, select
from ser.metrics import uar
from ser.predict import write_predictions

KINDS = ["logreg", "linear_svm"]
CURVE_COLUMNS = {"epoch", "loss", "accuracy", "uar", "val_loss", "val_accuracy", "val_uar", "C"}


@pytest.fixture(scope="module")
def table():
    # overlapping classes, so that C matters and validation UAR is below 1
    return feature_table(make_params(), spread=4.0)


def train_and_val(table):
    return select(table, "train", with_augmented=True), select(table, "val")


@pytest.mark.parametrize("balanced", [True, False])
def test_logreg_is_multinomial_and_balances_classes_when_asked(balanced):
    estimator = make_estimator(ModelParams(kind="logreg", C=0.3), balanced, 0, np.array(["a", "b"]))
    assert isinstance(estimator, LogisticRegression)
    assert estimator.C == 0.3 and estimator.solver == "lbfgs"
    assert estimator.class_weight == ("balanced" if balanced else None)


def test_svm_calibration_folds_hold_out_whole_training_speakers():
    speakers = np.repeat(["s1", "s2", "s3", "s4"], 5)
    estimator = make_estimator(ModelParams(kind="linear_svm", C=0.2), True, 3, speakers)
    assert isinstance(estimator, CalibratedClassifierCV)
    assert estimator.estimator.C == 0.2 and estimator.estimator.class_weight == "balanced"
    assert len(estimator.cv) == 3
    held_out = []
    for fit_rows, calibration_rows in estimator.cv:
        assert not set(speakers[fit_rows]) & set(speakers[calibration_rows])
        held_out.extend(speakers[calibration_rows])
    assert sorted(held_out) == sorted(speakers)


def test_svm_needs_two_training_speakers():
    with pytest.raises(ValueError, match="needs two"):
        make_estimator(ModelParams(kind="linear_svm"), True, 0, np.array(["s1"] * 4))


def test_the_cnn_is_not_a_linear_baseline():
    with pytest.raises(ValueError, match="not a linear baseline"):
        make_estimator(ModelParams(kind="cnn"), True, 0, np.array(["s1", "s2"]))


@pytest.mark.parametrize("kind", KINDS)
def test_c_is_the_grid_value_with_the_best_validation_uar(table, kind):
    grid = [1.0, 0.0001, 0.01]
    classifier, chosen, curve = fit_linear(
        *train_and_val(table), ModelParams(kind=kind, C_grid=grid), make_params()
    )
    assert [row["C"] for row in curve] == sorted(grid)
    assert [row["epoch"] for row in curve] == [1, 2, 3]
    assert set(curve[0]) == CURVE_COLUMNS
    best = max(curve, key=lambda row: row["val_uar"])  # the first of equals: the smaller C
    assert (chosen.C, chosen.kind) == (best["C"], kind)
    val_rows = select(table, "val")
    predicted = classifier.predict(matrix(val_rows, classifier.feature_names))
    assert uar(val_rows["label"].tolist(), predicted) == pytest.approx(best["val_uar"])
    assert len({row["val_uar"] for row in curve}) > 1, "C should matter on this table"


def test_an_empty_grid_uses_c_as_is(table):
    _, chosen, curve = fit_linear(
        *train_and_val(table), ModelParams(kind="logreg", C=0.05, C_grid=[]), make_params()
    )
    assert chosen.C == 0.05
    assert [row["C"] for row in curve] == [0.05]


def test_ties_go_to_the_stronger_regularisation():
    easy = feature_table(make_params(), spread=0.05)  # every C separates the classes
    _, chosen, curve = fit_linear(
        *train_and_val(easy), ModelParams(kind="logreg", C_grid=[10.0, 0.1, 1.0]), make_params()
    )
    assert [row["val_uar"] for row in curve] == [1.0, 1.0, 1.0]
    assert chosen.C == 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_fitting_is_repeatable_and_survives_save_and_load(table, tmp_path, kind):
    hp = ModelParams(kind=kind, C_grid=[0.01])
    classifier, _, curve = fit_linear(*train_and_val(table), hp, make_params())
    _, _, again = fit_linear(*train_and_val(table), hp, make_params())
    assert again == curve
    classifier.save(tmp_path)
    assert (tmp_path / ESTIMATOR_FILE).is_file() and not (tmp_path / NETWORK_FILE).exists()
    loaded = Classifier.load(tmp_path)
    values = matrix(select(table, "test"), classifier.feature_names)
    np.testing.assert_array_equal(loaded.predict_proba(values), classifier.predict_proba(values))
    np.testing.assert_allclose(loaded.predict_proba(values).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_train_evaluate_and_predict_with_a_linear_kind(mlflow_workspace, kind):
    params = make_params()
    write_parquet(paths.FEATURES, feature_table(params, spread=2.0))
    hp = ModelParams(kind=kind, C_grid=[0.001, 0.1])
    write_json(paths.HYPERPARAMS, hp.model_dump(mode="json"))

    metrics = train.run(params)
    assert metrics["C"] in hp.C_grid and "epochs_run" not in metrics
    assert 0 <= metrics["val_uar"] <= 1
    assert json.loads(paths.TRAIN_METRICS.read_text()) == metrics
    assert sorted(p.name for p in paths.MODELS_DIR.iterdir()) == sorted(
        [ESTIMATOR_FILE, "preprocessing.joblib", "feature_config.json", "mlflow_run.json"]
    )
    with paths.TRAINING_CURVE.open() as handle:
        curve = list(csv.DictReader(handle))
    assert [float(row["C"]) for row in curve] == hp.C_grid
    assert set(curve[0]) == CURVE_COLUMNS

    headline = evaluate.run(params)
    assert json.loads(paths.METRICS.read_text()) == {"test": headline}
    run_id = json.loads(paths.TRAIN_RUN_ID.read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{mlflow_workspace / 'mlflow.db'}")
    logged = client.get_run(run_id)
    assert logged.data.params["chosen.kind"] == kind
    assert float(logged.data.params["chosen.C"]) == metrics["C"]
    assert logged.data.metrics["test_uar"] == pytest.approx(headline["uar"])
    assert [m.step for m in client.get_metric_history(run_id, "val_uar")] == [1, 2]
    logged_files = {a.path for a in client.list_artifacts(run_id, "model")}
    assert f"model/{ESTIMATOR_FILE}" in logged_files

    clip = write_audio(mlflow_workspace / "clip.wav", tone(0.8, 220))
    out = io.StringIO()
    assert write_predictions([clip], paths.MODELS_DIR, as_json=True, out=out) == 0
    record = json.loads(out.getvalue())
    assert record["label"] in EMOTIONS
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, rel=1e-5)
