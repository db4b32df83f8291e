"""The feature table and its frames on disk, selecting rows, and per-speaker normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import feature_table, make_params, write_feature_files

from ser import paths
from ser.ops.atomic import write_parquet
from ser.signal.features import feature_names
from ser.table.store import (
    FRAMES_COLUMN,
    feature_columns,
    load_features,
    load_frames,
    load_rows,
    matrix,
    normalise_per_speaker,
    select,
    speaker_statistics,
    write_frames,
)


def table(seed: int = 0) -> pd.DataFrame:
    """Two speakers with very different feature offsets; speaker b has augmented copies."""
    rng = np.random.default_rng(seed)
    rows = []
    for speaker, offset, split in (("a", 0.0, "test"), ("b", 50.0, "train")):
        for clip in range(6):
            for augmentation in ("none", "noise") if split == "train" else ("none",):
                values = offset + rng.normal(0, 1 + clip % 3, 3)
                rows.append(
                    {
                        "path": f"{speaker}{clip}.wav",
                        "corpus": "ravdess",
                        "speaker": speaker,
                        "sex": "male",
                        "label": "happy",
                        "intensity": "normal",
                        "split": split,
                        "augmentation": augmentation,
                        "f0": values[0],
                        "f1": values[1],
                        "f2": 7.0,
                    }
                )
    return pd.DataFrame(rows)


def test_each_speaker_is_standardised_with_its_own_original_clips():
    frame = table()
    normalised = normalise_per_speaker(frame)
    originals = normalised[normalised["augmentation"] == "none"]
    for _, rows in originals.groupby("speaker"):
        np.testing.assert_allclose(rows[["f0", "f1"]].mean(), 0, atol=1e-5)
        np.testing.assert_allclose(rows[["f0", "f1"]].std(ddof=0), 1, atol=1e-5)
    assert (normalised["f2"] == 0).all(), "a constant feature becomes 0, not NaN"


def test_augmented_rows_use_the_statistics_of_the_originals():
    frame = table()
    normalised = normalise_per_speaker(frame)
    speaker_b = frame[(frame["speaker"] == "b") & (frame["augmentation"] == "none")]
    mean, spread = speaker_statistics(speaker_b[["f0", "f1", "f2"]].to_numpy())
    noisy = frame["augmentation"] == "noise"
    expected = (frame.loc[noisy, ["f0", "f1", "f2"]].to_numpy() - mean) / spread
    np.testing.assert_allclose(normalised.loc[noisy, ["f0", "f1", "f2"]], expected, rtol=1e-5)


def test_one_speaker_never_changes_another_speakers_statistics():
    frame = table()
    shifted = frame.copy()
    shifted.loc[shifted["speaker"] == "b", "f0"] += 1000
    left = normalise_per_speaker(frame).query("speaker == 'a'")
    right = normalise_per_speaker(shifted).query("speaker == 'a'")
    pd.testing.assert_frame_equal(left, right)


def test_select_keeps_augmented_copies_only_when_asked():
    frame = table()
    assert set(select(frame, "train")["augmentation"]) == {"none"}
    assert set(select(frame, "train", with_augmented=True)["augmentation"]) == {"none", "noise"}
    assert feature_columns(frame) == ["f0", "f1", "f2"]
    with pytest.raises(ValueError, match="no 'val' rows"):
        select(frame, "val")


def ragged_frames(lengths: list[int], bands: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (n, bands)).astype(np.float32) for n in lengths]


@pytest.mark.parametrize("lengths", [[3, 1, 7, 2], [4], [0, 3, 0]])
def test_frames_round_trip(tmp_path, lengths):
    frames = ragged_frames(lengths)
    write_frames(tmp_path / "frames.npz", frames)
    loaded = load_frames(tmp_path / "frames.npz")
    assert len(loaded) == len(frames)
    for original, back in zip(frames, loaded, strict=True):
        assert back.dtype == np.float32
        np.testing.assert_array_equal(back, original)


def test_zero_rows_round_trip(tmp_path):
    write_frames(tmp_path / "frames.npz", [])
    assert load_frames(tmp_path / "frames.npz") == []


def test_frames_are_stored_as_one_array_and_the_row_lengths(tmp_path):
    frames = ragged_frames([3, 1, 7])
    write_frames(tmp_path / "frames.npz", frames)
    with np.load(tmp_path / "frames.npz") as stored:
        assert sorted(stored.files) == ["lengths", "values"]
        assert stored["values"].shape == (11, 5)
        assert stored["lengths"].tolist() == [3, 1, 7]


def test_frames_whose_lengths_disagree_with_the_values_are_refused(tmp_path):
    path = tmp_path / "frames.npz"
    np.savez(path, values=np.zeros((10, 5), np.float32), lengths=np.array([3, 4]))
    with pytest.raises(ValueError, match="frame counts add up to 7, not 10") as error:
        load_frames(path)
    assert str(path) in str(error.value)


def test_missing_frames_say_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the preprocess stage") as error:
        load_frames(tmp_path / "frames.npz")
    assert str(tmp_path / "frames.npz") in str(error.value)


@pytest.fixture
def stored(tmp_path):
    """A feature table as preprocess writes it: parquet without frames, frames apart."""
    table = feature_table(make_params(), splits={"train": 1, "val": 1, "test": 1}, takes=1)
    write_parquet(tmp_path / "features.parquet", table.drop(columns=FRAMES_COLUMN))
    write_frames(tmp_path / "frames.npz", table[FRAMES_COLUMN].tolist())
    return table, tmp_path / "features.parquet", tmp_path / "frames.npz"


def test_load_features_without_frames_is_the_table_alone(stored):
    table, features, _ = stored
    loaded = load_features(features)
    assert FRAMES_COLUMN not in loaded.columns
    pd.testing.assert_frame_equal(loaded, table.drop(columns=FRAMES_COLUMN))


def test_load_features_with_frames_attaches_each_rows_frames(stored):
    table, features, frames = stored
    loaded = load_features(features, frames)
    assert list(loaded.columns) == list(table.columns)
    pd.testing.assert_frame_equal(
        loaded.drop(columns=FRAMES_COLUMN), table.drop(columns=FRAMES_COLUMN)
    )
    assert len(set(map(len, loaded[FRAMES_COLUMN]))) > 1, "rows of different lengths"
    for mine, theirs in zip(loaded[FRAMES_COLUMN], table[FRAMES_COLUMN], strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_frames_of_another_row_count_are_refused_naming_both_files(stored):
    table, features, frames = stored
    write_frames(frames, table[FRAMES_COLUMN].tolist()[:-1])
    with pytest.raises(ValueError) as error:
        load_features(features, frames)
    message = str(error.value)
    assert str(features) in message and str(frames) in message
    assert f"frames of {len(table) - 1} rows" in message
    assert f"has {len(table)}" in message


def test_a_missing_table_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the preprocess stage"):
        load_features(tmp_path / "features.parquet", tmp_path / "frames.npz")


def test_zero_row_table_with_zero_frames_loads(tmp_path):
    table = feature_table(make_params(), splits={"val": 1}, takes=1).iloc[:0]
    write_parquet(tmp_path / "features.parquet", table.drop(columns=FRAMES_COLUMN))
    write_frames(tmp_path / "frames.npz", [])
    loaded = load_features(tmp_path / "features.parquet", tmp_path / "frames.npz")
    assert loaded.empty
    assert FRAMES_COLUMN in loaded.columns


def test_load_rows_reads_the_pipeline_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_params()
    table = feature_table(params, splits={"train": 1, "val": 1, "test": 1}, takes=1)
    write_feature_files(table)
    assert paths.FRAMES_FILE.is_file()
    with_frames, without = load_rows(with_frames=True), load_rows(with_frames=False)
    assert FRAMES_COLUMN not in without.columns
    assert len(with_frames) == len(without) == len(table)
    np.testing.assert_array_equal(
        with_frames[FRAMES_COLUMN].iloc[-1], table[FRAMES_COLUMN].iloc[-1]
    )


def test_feature_columns_leave_out_metadata_and_frames():
    params = make_params()
    table = feature_table(params, splits={"train": 1}, takes=1)
    assert FRAMES_COLUMN in table.columns
    assert feature_columns(table) == feature_names(params.features)


def test_matrix_takes_the_columns_by_name_in_the_order_asked_and_names_a_missing_one():
    rows = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "label": ["x", "y"]})
    np.testing.assert_array_equal(matrix(rows, ["b", "a"]), [[3.0, 1.0], [4.0, 2.0]])
    assert matrix(rows, ["a"]).dtype == np.float32
    with pytest.raises(KeyError, match=r"1 feature column.*'c'"):
        matrix(rows, ["a", "c"])
