"""Linear kinds: estimators, C chosen on validation speakers, refit, saved models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import feature_table, kind_params, make_params
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression

from ser import EMOTIONS
from ser.metrics import uar
from ser.models import linear
from ser.models.base import label_indices
from ser.models.linear import ESTIMATOR_FILE, LINEAR_SVM, LOGREG, Linear, make_estimator
from ser.table.store import select

KINDS = {"logreg": LOGREG, "linear_svm": LINEAR_SVM}
CURVE_COLUMNS = {"epoch", "loss", "accuracy", "uar", "val_loss", "val_accuracy", "val_uar", "C"}


@pytest.fixture(scope="module")
def table():
    # overlapping classes, so that C matters and validation UAR is below 1
    return feature_table(make_params(), spread=4.0)


def train_and_val(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return select(table, "train", with_augmented=True), select(table, "val")


def grid(kind: str, c_grid: list[float], c: float = 0.01):
    return kind_params(kind, {"linear": {"C": c, "C_grid": c_grid}})


def c_of(model: Linear) -> float:
    """The C of a fitted linear model (the SVM's sits inside its calibration)."""
    estimator = model.estimator
    return estimator.C if isinstance(estimator, LogisticRegression) else estimator.estimator.C


@pytest.mark.parametrize("balanced", [True, False])
def test_logreg_is_multinomial_and_balances_classes_when_asked(balanced):
    estimator = make_estimator("logreg", 0.3, balanced, 0, np.array(["a", "b"]))
    assert isinstance(estimator, LogisticRegression)
    assert estimator.C == 0.3 and estimator.solver == "lbfgs"
    assert estimator.class_weight == ("balanced" if balanced else None)


def test_svm_calibration_folds_hold_out_whole_training_speakers():
    speakers = np.repeat(["s1", "s2", "s3", "s4"], 5)
    estimator = make_estimator("linear_svm", 0.2, True, 3, speakers)
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
        make_estimator("linear_svm", 0.01, True, 0, np.array(["s1"] * 4))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_c_is_the_grid_value_with_the_best_validation_uar(table, kind):
    c_grid = [1.0, 0.0001, 0.01]
    fitted = KINDS[kind].fit(*train_and_val(table), grid(kind, c_grid), ())
    curve = fitted.curve
    assert [row["C"] for row in curve] == sorted(c_grid)
    assert [row["epoch"] for row in curve] == [1, 2, 3]
    assert set(curve[0]) == CURVE_COLUMNS
    assert len({row["val_uar"] for row in curve}) > 1, "C should matter on this table"
    best = max(curve, key=lambda row: row["val_uar"])  # the first of equals: the smaller C
    chosen = best["C"]
    assert fitted.how == {"C": chosen}
    assert (fitted.params.linear.C, fitted.params.linear.C_grid) == (chosen, c_grid)
    assert fitted.model.kind == kind and c_of(fitted.model) == chosen
    val_rows = select(table, "val")
    predicted = fitted.model.predict_proba(val_rows).argmax(axis=1)
    assert uar(label_indices(val_rows), predicted) == pytest.approx(best["val_uar"])


def test_an_empty_grid_uses_c_as_is(table):
    fitted = LOGREG.fit(*train_and_val(table), grid("logreg", [], c=0.05), ())
    assert fitted.how == {"C": 0.05}
    assert [row["C"] for row in fitted.curve] == [0.05]
    assert c_of(fitted.model) == 0.05


def test_ties_go_to_the_stronger_regularisation():
    easy = feature_table(make_params(), spread=0.05)  # every C separates the classes
    fitted = LOGREG.fit(*train_and_val(easy), grid("logreg", [10.0, 0.1, 1.0]), ())
    assert [row["val_uar"] for row in fitted.curve] == [1.0, 1.0, 1.0]
    assert fitted.how == {"C": 0.1} and c_of(fitted.model) == 0.1


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fitting_is_repeatable_and_survives_save_and_load(table, tmp_path, kind):
    params = grid(kind, [0.01])
    fitted = KINDS[kind].fit(*train_and_val(table), params, ())
    again = KINDS[kind].fit(*train_and_val(table), params, ())
    assert again.curve == fitted.curve
    written = fitted.model.save(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(written)
    assert {p.name for p in written} == {ESTIMATOR_FILE, "preprocessing.joblib"}
    loaded = KINDS[kind].load(tmp_path)
    assert isinstance(loaded, Linear) and loaded.kind == kind
    test_rows = select(table, "test")
    probabilities = loaded.predict_proba(test_rows)
    np.testing.assert_array_equal(probabilities, fitted.model.predict_proba(test_rows))
    np.testing.assert_array_equal(probabilities, again.model.predict_proba(test_rows))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_refit_keeps_the_chosen_c_on_more_rows(table, kind):
    fitted = KINDS[kind].fit(*train_and_val(table), grid(kind, [0.0001, 1.0]), ())
    both = pd.concat(train_and_val(table), ignore_index=True)
    refitted = KINDS[kind].refit(both, fitted)
    assert refitted.kind == kind
    assert c_of(refitted) == fitted.how["C"]
    assert refitted.inputs.preprocessing["scale"].n_samples_seen_ == len(both)


def test_classes_missing_from_training_get_zero_probability(table):
    seen = ["angry", "sad", "happy"]
    train_rows, val_rows = train_and_val(table)
    fitted = LOGREG.fit(
        train_rows[train_rows["label"].isin(seen)], val_rows, grid("logreg", []), ()
    )
    probabilities = fitted.model.predict_proba(select(table, "test"))
    assert probabilities.shape == (len(select(table, "test")), len(EMOTIONS))
    unseen = [i for i, label in enumerate(EMOTIONS) if label not in seen]
    np.testing.assert_array_equal(probabilities[:, unseen], 0.0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_no_rows_give_no_probabilities(table):
    fitted = LOGREG.fit(*train_and_val(table), grid("logreg", []), ())
    assert fitted.model.predict_proba(table.iloc[:0]).shape == (0, len(EMOTIONS))


def test_scores_are_named_like_the_networks_epoch_logs(table):
    fitted = LOGREG.fit(*train_and_val(table), grid("logreg", []), ())
    val_rows = select(table, "val")
    scores = linear.scores(fitted.model, val_rows, "val_")
    assert set(scores) == {"val_loss", "val_accuracy", "val_uar"}
    predicted = fitted.model.predict_proba(val_rows).argmax(axis=1)
    assert scores["val_accuracy"] == pytest.approx(np.mean(predicted == label_indices(val_rows)))
    assert scores == {key: fitted.curve[0][key] for key in scores}
