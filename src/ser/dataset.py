"""Reading the feature table and selecting the rows a stage may see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ser.featurize import ORIGINAL

META_COLUMNS = ("path", "corpus", "speaker", "sex", "label", "intensity", "split", "augmentation")


def load_features(path: Path) -> pd.DataFrame:
    """The feature table written by preprocess."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature table not found (run the preprocess stage)")
    return pd.read_parquet(path)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in META_COLUMNS]


def select(frame: pd.DataFrame, split: str, with_augmented: bool = False) -> pd.DataFrame:
    """Rows of one split; augmented copies only when asked (they exist for train only)."""
    rows = frame[frame["split"] == split]
    if not with_augmented:
        rows = rows[rows["augmentation"] == ORIGINAL]
    if rows.empty:
        raise ValueError(f"the feature table has no {split!r} rows")
    return rows.reset_index(drop=True)


def matrix(rows: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return rows[columns].to_numpy(dtype=np.float32)


def normalise_per_speaker(frame: pd.DataFrame) -> pd.DataFrame:
    """Standardise each speaker's rows with the mean and spread of that speaker's original clips.

    No labels are used, but every speaker's own clips are, the test speakers'
    included: results with it must be reported apart from the headline.
    """
    columns = feature_columns(frame)
    values = frame[columns].to_numpy(np.float64, copy=True)
    is_original = (frame["augmentation"] == ORIGINAL).to_numpy()
    for rows in frame.groupby("speaker").indices.values():
        mean, spread = speaker_statistics(values[rows][is_original[rows]])
        values[rows] = (values[rows] - mean) / spread
    normalised = frame.copy()
    normalised[columns] = values.astype(np.float32)
    return normalised


def speaker_statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of one speaker's clips (a constant feature gets spread 1)."""
    spread = values.std(axis=0)
    return values.mean(axis=0), np.where(spread > 0, spread, 1.0)
