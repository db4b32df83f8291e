"""Fusion: the spectrogram CNN and logistic regression, weighted as validation chose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import feature_table, kind_params

from ser import EMOTIONS
from ser.metrics import uar
from ser.models import fusion
from ser.models.base import Fitted, Kind, Model, label_indices
from ser.models.fusion import WEIGHT_FILE, Fusion, combine
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


def test_combine_weights_the_networks_probabilities():
    network = np.array([[0.8, 0.2], [0.1, 0.9]])
    linear_model = np.array([[0.4, 0.6], [0.5, 0.5]])
    combined = combine(network, linear_model, 0.25)
    assert combined.dtype == np.float32
    np.testing.assert_allclose(combined, [[0.5, 0.5], [0.4, 0.6]], rtol=1e-6)


@pytest.mark.parametrize(
    ("network_right_on", "linear_right_on", "weight"),
    [
        ({"val"}, {"train"}, 1.0),  # validation speaks, not the training rows
        ({"train"}, {"val"}, 0.3),  # 0.0 and 0.3 tie: the larger weight
        ({"val"}, {"val"}, 1.0),  # every weight ties
    ],
)
def test_the_weight_is_the_best_on_validation(
    monkeypatch, table, network_right_on, linear_right_on, weight
):
    monkeypatch.setitem(fusion.MEMBERS, "spectrogram_cnn", oracle_kind("cnn", network_right_on, []))
    monkeypatch.setitem(fusion.MEMBERS, "logreg", oracle_kind("linear", linear_right_on, []))
    params = kind_params("fusion", {"fusion": {"weights": [0.3, 1.0, 0.0]}})
    fitted = fusion.fit(select(table, "train"), select(table, "val"), params)
    assert fitted.how == {"weight": weight, "cnn choice": 1.0, "linear choice": 1.0}
    assert fitted.model.weight == weight
    assert set(fitted.parts) == {"spectrogram_cnn", "logreg"}


def test_refit_refits_both_members_and_keeps_the_weight(monkeypatch, table):
    refits = []
    monkeypatch.setitem(fusion.MEMBERS, "spectrogram_cnn", oracle_kind("cnn", {"val"}, refits))
    monkeypatch.setitem(fusion.MEMBERS, "logreg", oracle_kind("linear", set(), refits))
    params = kind_params("fusion", {"fusion": {"weights": [0.0, 0.7]}})
    fitted = fusion.fit(select(table, "train"), select(table, "val"), params)
    both = pd.concat([select(table, "train"), select(table, "val")], ignore_index=True)
    refitted = fusion.refit(both, fitted)
    assert refitted.weight == fitted.how["weight"] == 0.7
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
            "fusion": {"weights": [0.0, 1.0]},
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
    assert fitted.how["weight"] == fitted.model.weight == 0.0
    np.testing.assert_array_equal(
        fitted.model.predict_proba(val_rows), linear_model.predict_proba(val_rows)
    )


def test_fitted_fusion_reports_both_members(logreg_better):
    fitted, _ = logreg_better
    cnn, logreg = fitted.parts["spectrogram_cnn"], fitted.parts["logreg"]
    assert fitted.model.network is cnn.model and fitted.model.linear is logreg.model
    assert fitted.how == {"weight": 0.0, **cnn.how, **logreg.how}
    assert set(fitted.how) == {"weight", "epochs", "C"}
    assert logreg.how == {"C": fitted.params.linear.C}  # the C validation chose
    assert fitted.curve == cnn.curve


def test_saved_fusion_predicts_like_the_original(tmp_path, table, logreg_better):
    members = logreg_better[0].model
    model = Fusion(members.network, members.linear, 0.6)
    written = model.save(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == [
        WEIGHT_FILE,
        "logreg/model.joblib",
        "logreg/preprocessing.joblib",
        "spectrogram_cnn/spectrogram_cnn.keras",
    ]
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(written)
    loaded = Fusion.load(tmp_path)
    assert loaded.weight == 0.6
    test_rows = select(table, "test")
    probabilities = loaded.predict_proba(test_rows)
    np.testing.assert_array_equal(probabilities, model.predict_proba(test_rows))
    expected = 0.6 * members.network.predict_proba(test_rows) + 0.4 * members.linear.predict_proba(
        test_rows
    )
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
