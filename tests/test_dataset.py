"""Selecting rows of the feature table and per-speaker normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ser.dataset import feature_columns, normalise_per_speaker, select, speaker_statistics


def table(seed: int = 0) -> pd.DataFrame:
    """Two speakers with very different feature offsets; speaker b has augmented copies."""
    rng = np.random.default_rng(seed)
    rows = []
    for speaker, offset, split in (("a", 0.0, "test"), ("b", 50.0, "train")):
        for clip in range(6):
            for augmentation in ("none", "noise") if split == "train" else ("none",):
                values = offset + rng.normal(0, 1 + clip % 3, 3)
                rows.append({
                    "path": f"{speaker}{clip}.wav", "corpus": "ravdess", "speaker": speaker,
                    "sex": "male", "label": "happy", "intensity": "normal", "split": split,
                    "augmentation": augmentation, "f0": values[0], "f1": values[1], "f2": 7.0,
                })  # fmt: skip
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
