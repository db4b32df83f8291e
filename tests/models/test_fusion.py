"""Fusion: the spectrogram CNN and logistic regression, pooled as validation chose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import feature_table, kind_params

from ser import EMOTIONS
from ser.metrics import expected_calibration_error, uar
from ser.models import fusion
from ser.models.base import Fitted, Kind, Model, label_indices
from ser.models.fusion import WEIGHT_FILE, Fusion, combine, fit_log_linear
from ser.ops.atomic import write_json
from ser.table.store import FRAMES_COLUMN, select


class Oracle(Model):
    """Sure of the true label on rows of the splits in ``right_on``, of a wrong one elsewhere."""

    kind = "oracle"

    def __init__(self, right_on: set[str]) -> None:
        self.right_on = right_on

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        truth = label_indices(rows)
        chosen = np.where(rows["split"].isin(self.right_on), truth, (truth + 1) % len(EMOTIONS))
        return np.eye(len(EMOTIONS), dtype=np.float32)[chosen]

    def save(self, directory: Path) -> list[Path]:
        return []


def oracle_kind(name: str, right_on: set[str], refits: list) -> Kind:
    """A member kind whose fit gives an Oracle, and whose refit records what it was given."""

    def fit(train_rows, val_rows, params, callbacks) -> Fitted:
        return Fitted(Oracle(right_on), params, [{"epoch": 1}], {f"{name} choice": 1.0})

    def refit(rows, fitted) -> Oracle:
        refits.append((name, len(rows), fitted))
        return Oracle(right_on)

    return Kind(name, name, frozenset(), fit, refit, lambda directory: Oracle(right_on))


@pytest.fixture(scope="module")
def table():
    return feature_table(kind_params("fusion"), {"train": 2, "val": 2, "test": 1})


def test_average_weights_the_networks_probabilities():
    network = np.array([[0.8, 0.2], [0.1, 0.9]])
    linear_model = np.array([[0.4, 0.6], [0.5, 0.5]])
    combined = combine(network, linear_model, "average", (0.25, 0.75))
    assert combined.dtype == np.float32
    np.testing.assert_allclose(combined, [[0.5, 0.5], [0.4, 0.6]], rtol=1e-6)


def test_log_linear_pooling_is_the_normalised_weighted_product():
    network = np.array([[0.8, 0.2], [0.1, 0.9]])
    linear_model = np.array([[0.4, 0.6], [0.5, 0.5]])
    combined = combine(network, linear_model, "log_linear", (1.0, 0.5))
    product = network * np.sqrt(linear_model)
    np.testing.assert_allclose(combined, product / product.sum(axis=1, keepdims=True), rtol=1e-6)
    # a zero probability stays finite (the floor), and weight 0 leaves a member out
    sure = combine(np.array([[1.0, 0.0]]), np.array([[0.3, 0.7]]), "log_linear", (0.0, 1.0))
    np.testing.assert_allclose(sure, [[0.3, 0.7]], rtol=1e-6)


def test_log_linear_weights_follow_the_informative_member_and_calibrate():
    rng = np.random.default_rng(0)
    rows, classes = 4000, len(EMOTIONS)
    logits = (
        rng.normal(size=(rows, classes)) + 3.0 * np.eye(classes)[rng.integers(0, classes, rows)]
    )
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(classes, p=p) for p in calibrated])  # drawn as it says
    timid = combine(calibrated, calibrated, "log_linear", (0.5, 0.0))  # its logits halved
    sure_of_nothing = np.eye(classes)[rng.integers(0, classes, rows)] * 0.9 + 0.1 / classes
    network_weight, linear_weight = fit_log_linear(timid, sure_of_nothing, truth)
    assert network_weight == pytest.approx(2.0, rel=0.15)  # undoes the halving
    assert linear_weight < 0.05
    pooled = combine(timid, sure_of_nothing, "log_linear", (network_weight, linear_weight))
    assert expected_calibration_error(timid, truth) > 0.1
    assert expected_calibration_error(pooled, truth) < 0.03


@pytest.mark.parametrize(
    ("network_right_on", "linear_right_on", "weight"),
    [
        ({"val"}, {"train"}, 1.0),  # validation speaks, not the training rows
        ({"train"}, {"val"}, 0.3),  # 0.0 and 0.3 tie: the larger weight
        ({"val"}, {"val"}, 1.0),  # every weight ties
    ],
)
def test_the_average_weight_is_the_best_on_validation(
    monkeypatch, table, network_right_on, linear_right_on, weight
):
    monkeypatch.setitem(fusion.MEMBERS, "spectrogram_cnn", oracle_kind("cnn", network_right_on, []))
    monkeypatch.setitem(fusion.MEMBERS, "logreg", oracle_kind("linear", linear_right_on, []))
    params = kind_params("fusion", {"fusion": {"pooling": "average", "weights": [0.3, 1.0, 0.0]}})
    fitted = fusion.fit(select(table, "train"), select(table, "val"), params)
    assert fitted.how == {
        "network_weight": weight,
        "linear_weight": 1 - weight,
        "cnn choice": 1.0,
        "linear choice": 1.0,
    }
    assert (fitted.model.pooling, fitted.model.weights) == ("average", (weight, 1 - weight))
    assert set(fitted.parts) == {"spectrogram_cnn", "logreg"}


def test_log_linear_weights_leave_out_the_member_wrong_on_validation(monkeypatch, table):
    monkeypatch.setitem(fusion.MEMBERS, "spectrogram_cnn", oracle_kind("cnn", {"train"}, []))
    monkeypatch.setitem(fusion.MEMBERS, "logreg", oracle_kind("linear", {"val"}, []))
    params = kind_params("fusion", {"fusion": {"pooling": "log_linear"}})
    fitted = fusion.fit(select(table, "train"), select(table, "val"), params)
    network_weight, linear_weight = fitted.model.weights
    assert fitted.model.pooling == "log_linear"
    assert network_weight == 0.0 and linear_weight > 1.0
    val_rows = select(table, "val")
    predicted = fitted.model.predict_proba(val_rows).argmax(axis=1)
    np.testing.assert_array_equal(predicted, label_indices(val_rows))


def test_refit_refits_both_members_and_keeps_the_weights(monkeypatch, table):
    refits = []
    monkeypatch.setitem(fusion.MEMBERS, "spectrogram_cnn", oracle_kind("cnn", {"val"}, refits))
    monkeypatch.setitem(fusion.MEMBERS, "logreg", oracle_kind("linear", set(), refits))
    params = kind_params("fusion", {"fusion": {"pooling": "average", "weights": [0.0, 0.7]}})
    fitted = fusion.fit(select(table, "train"), select(table, "val"), params)
    both = pd.concat([select(table, "train"), select(table, "val")], ignore_index=True)
    refitted = fusion.refit(both, fitted)
    assert (refitted.pooling, refitted.weights) == ("average", (0.7, 1 - 0.7))
    assert fitted.how["network_weight"] == 0.7
    assert [(name, rows) for name, rows, _ in refits] == [("cnn", len(both)), ("linear", len(both))]
    assert [part for _, _, part in refits] == [
        fitted.parts["spectrogram_cnn"],
        fitted.parts["logreg"],
    ]
    assert refitted.network is not fitted.model.network


@pytest.fixture(scope="module")
def logreg_better(table):
    """Fusion fitted on frames shuffled across clips (the CNN cannot learn) and clean vectors."""
    shuffled = table.assign(
        **{FRAMES_COLUMN: table[FRAMES_COLUMN].sample(frac=1, random_state=0).tolist()}
    )
    params = kind_params(
        "fusion",
        {
            "fusion": {"pooling": "average", "weights": [0.0, 1.0]},
            "spectrogram_cnn": {"epochs": 1},
            "linear": {"C_grid": [0.01, 0.1]},
        },
    )
    train_rows, val_rows = select(shuffled, "train", with_augmented=True), select(shuffled, "val")
    return fusion.fit(train_rows, val_rows, params), val_rows


def test_a_clearly_better_member_takes_all_the_weight(logreg_better):
    fitted, val_rows = logreg_better
    truth = label_indices(val_rows)
    network, linear_model = fitted.model.network, fitted.model.linear
    from_network = uar(truth, network.predict_proba(val_rows).argmax(axis=1))
    from_linear = uar(truth, linear_model.predict_proba(val_rows).argmax(axis=1))
    assert from_linear > from_network + 0.3  # the premise: logistic regression is clearly better
    assert fitted.model.weights == (0.0, 1.0)
    np.testing.assert_array_equal(
        fitted.model.predict_proba(val_rows), linear_model.predict_proba(val_rows)
    )


def test_fitted_fusion_reports_both_members(logreg_better):
    fitted, _ = logreg_better
    cnn, logreg = fitted.parts["spectrogram_cnn"], fitted.parts["logreg"]
    assert fitted.model.network is cnn.model and fitted.model.linear is logreg.model
    assert fitted.how == {"network_weight": 0.0, "linear_weight": 1.0, **cnn.how, **logreg.how}
    assert set(fitted.how) == {"network_weight", "linear_weight", "epochs", "C"}
    assert logreg.how == {"C": fitted.params.linear.C}  # the C validation chose
    assert fitted.curve == cnn.curve


@pytest.mark.parametrize(
    ("pooling", "weights"), [("log_linear", (0.8, 1.3)), ("average", (0.6, 0.4))]
)
def test_saved_fusion_predicts_like_the_original(tmp_path, table, logreg_better, pooling, weights):
    members = logreg_better[0].model
    model = Fusion(members.network, members.linear, pooling, weights)
    written = model.save(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == [
        WEIGHT_FILE,
        "logreg/model.joblib",
        "logreg/preprocessing.joblib",
        "spectrogram_cnn/spectrogram_cnn.keras",
    ]
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(written)
    loaded = Fusion.load(tmp_path)
    assert (loaded.pooling, loaded.weights) == (pooling, weights)
    test_rows = select(table, "test")
    probabilities = loaded.predict_proba(test_rows)
    np.testing.assert_array_equal(probabilities, model.predict_proba(test_rows))
    expected = combine(
        members.network.predict_proba(test_rows),
        members.linear.predict_proba(test_rows),
        pooling,
        weights,
    )
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)


def test_a_fusion_saved_with_one_weight_loads_as_the_average(tmp_path, table, logreg_better):
    members = logreg_better[0].model
    Fusion(members.network, members.linear, "average", (0.6, 0.4)).save(tmp_path)
    write_json(tmp_path / WEIGHT_FILE, {"weight": 0.6})  # as saved before log-linear pooling
    loaded = Fusion.load(tmp_path)
    assert (loaded.pooling, loaded.weights) == ("average", (0.6, 0.4))
    test_rows = select(table, "test")
    expected = 0.6 * members.network.predict_proba(test_rows) + 0.4 * members.linear.predict_proba(
        test_rows
    )
    np.testing.assert_allclose(loaded.predict_proba(test_rows), expected, rtol=1e-6)
