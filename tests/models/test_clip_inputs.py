"""The clip-feature vector as the seed CNN and the linear kinds see it: fitted, saved, loaded."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from conftest import feature_table, make_params
from sklearn.preprocessing import StandardScaler

from ser import EMOTIONS
from ser.config import PreprocessingParams
from ser.models.base import ModelError, label_encoder
from ser.models.clip_inputs import (
    PREPROCESSING_FILE,
    ClipInputs,
    fit_clip_inputs,
    fit_preprocessing,
)
from ser.table.store import FRAMES_COLUMN, META_COLUMNS, matrix, select


def informative_values(rows: int = 140, columns: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Random values where only columns 3 and 17 carry the label (and column 5 an outlier)."""
    rng = np.random.default_rng(8)
    labels = np.arange(rows) % len(EMOTIONS)
    values = rng.normal(size=(rows, columns))
    values[:, 3] += 2.0 * labels
    values[:, 17] -= 1.5 * labels
    values[0, 5] = 1e3
    return values, labels


def test_without_clip_or_selection_it_only_standardises():
    values, labels = informative_values()
    preprocessing = fit_preprocessing(
        values, labels, PreprocessingParams(input_clip=None, select_k=None)
    )
    assert list(preprocessing.named_steps) == ["scale"]
    prepared = preprocessing.transform(values)
    np.testing.assert_allclose(prepared.mean(axis=0), 0.0, atol=1e-9)
    assert prepared[0, 5] > 10  # the outlier passes through unclipped


def test_preprocessing_clips_and_keeps_the_most_informative_features():
    values, labels = informative_values()
    preprocessing = fit_preprocessing(
        values, labels, PreprocessingParams(input_clip=3.0, select_k=2)
    )
    assert list(preprocessing.named_steps) == ["scale", "clip", "select"]
    assert list(preprocessing.get_feature_names_out()) == ["x3", "x17"]
    clipped = preprocessing[:-1].transform(values)
    assert clipped.max() == 3.0 and clipped.min() >= -3.0
    assert preprocessing.transform(values).shape == (len(values), 2)


@pytest.mark.parametrize("select_k", [30, 50])
def test_select_k_as_wide_as_the_features_keeps_them_all(select_k):
    values, labels = informative_values()
    preprocessing = fit_preprocessing(values, labels, PreprocessingParams(select_k=select_k))
    assert list(preprocessing.named_steps) == ["scale", "clip"]
    assert preprocessing.transform(values).shape == values.shape


@pytest.fixture(scope="module")
def table():
    return feature_table(make_params())


def test_inputs_read_every_clip_feature_fitted_on_the_rows_given(table):
    train_rows = select(table, "train", with_augmented=True)
    inputs = fit_clip_inputs(train_rows, PreprocessingParams(input_clip=None, select_k=12))
    expected = [c for c in table.columns if c not in META_COLUMNS and c != FRAMES_COLUMN]
    assert inputs.feature_names == expected
    assert inputs.width == 12
    scale = inputs.preprocessing["scale"]
    assert scale.n_samples_seen_ == len(train_rows)
    np.testing.assert_allclose(
        scale.mean_, matrix(train_rows, expected).mean(axis=0), rtol=1e-5, atol=1e-6
    )
    prepared = inputs.transform(select(table, "test"))
    assert prepared.shape == (len(select(table, "test")), 12) and prepared.dtype == np.float32


def test_columns_are_read_by_name_not_position(table):
    rows = select(table, "train")
    inputs = fit_clip_inputs(rows, PreprocessingParams())
    reordered = rows[list(reversed(rows.columns))]
    np.testing.assert_array_equal(inputs.transform(reordered), inputs.transform(rows))


def test_saved_inputs_transform_like_the_original(tmp_path, table):
    rows = select(table, "train", with_augmented=True)
    inputs = fit_clip_inputs(rows, PreprocessingParams(input_clip=2.5, select_k=5))
    assert inputs.save(tmp_path) == tmp_path / PREPROCESSING_FILE
    stored = joblib.load(tmp_path / PREPROCESSING_FILE)
    assert [str(c) for c in stored["encoder"].categories_[0]] == list(EMOTIONS)
    loaded = ClipInputs.load(tmp_path)
    assert loaded.feature_names == inputs.feature_names
    assert list(loaded.preprocessing.named_steps) == ["scale", "clip", "select"]
    test_rows = select(table, "test")
    np.testing.assert_array_equal(loaded.transform(test_rows), inputs.transform(test_rows))


def test_a_missing_file_says_what_to_run(tmp_path):
    with pytest.raises(ModelError, match=rf"{PREPROCESSING_FILE}: missing \(run the train stage"):
        ClipInputs.load(tmp_path)


def test_a_file_saved_before_the_preprocessing_pipeline_is_refused(tmp_path):
    old = {"scaler": StandardScaler(), "encoder": label_encoder(), "feature_names": ["x"]}
    joblib.dump(old, tmp_path / PREPROCESSING_FILE)
    with pytest.raises(ModelError, match=r"preprocessing\.joblib: saved by an older version"):
        ClipInputs.load(tmp_path)
