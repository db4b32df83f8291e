"""The feature table and frames: storing, reading, and selecting the rows a stage may see.

Stages work on one DataFrame per set of rows: metadata, one column per clip feature
and, when loaded with its frames, a ``logmel`` column holding each row's log-mel frames
(frames x mels). The frames are stored apart from the parquet table, as one ``.npz``
of a single contiguous float32 array plus each row's frame count: thousands of
parquet columns or a nested list column would take far longer to load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ser import ORIGINAL, paths
from ser.ops.atomic import write_with

META_COLUMNS = ("path", "corpus", "speaker", "sex", "label", "intensity", "split", "augmentation")
FRAMES_COLUMN = "logmel"


def write_frames(target: Path, frames: list[np.ndarray]) -> None:
    """Every row's frames, concatenated, with each row's frame count."""
    lengths = np.array([len(f) for f in frames], np.int64)
    width = frames[0].shape[1] if frames else 0
    values = np.concatenate(frames) if frames else np.empty((0, width), np.float32)
    write_with(target, lambda path: np.savez(path, values=values, lengths=lengths))


def load_frames(path: Path) -> list[np.ndarray]:
    """The frames of each row, as written by ``write_frames`` (views of one array)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: frames not found (run the preprocess stage)")
    with np.load(path) as stored:
        values, lengths = stored["values"], stored["lengths"]
    if lengths.sum() != len(values):
        raise ValueError(f"{path}: frame counts add up to {lengths.sum()}, not {len(values)}")
    return np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else []


def load_features(path: Path, frames_path: Path | None = None) -> pd.DataFrame:
    """The feature table written by preprocess, with each row's frames if ``frames_path``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature table not found (run the preprocess stage)")
    table = pd.read_parquet(path)
    if frames_path is None:
        return table
    frames = load_frames(frames_path)
    if len(frames) != len(table):
        raise ValueError(
            f"{frames_path}: frames of {len(frames)} rows, but {path} has {len(table)} "
            "(run the preprocess stage again)"
        )
    return table.assign(**{FRAMES_COLUMN: frames})


def load_rows(with_frames: bool) -> pd.DataFrame:
    """The pipeline's feature table (``paths.FEATURES``), with frames if asked."""
    return load_features(paths.FEATURES, paths.FRAMES_FILE if with_frames else None)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The clip-feature columns (neither metadata nor frames)."""
    return [c for c in frame.columns if c not in META_COLUMNS and c != FRAMES_COLUMN]


def select(frame: pd.DataFrame, split: str, with_augmented: bool = False) -> pd.DataFrame:
    """Rows of one split; augmented copies only when asked (they exist for train only)."""
    rows = frame[frame["split"] == split]
    if not with_augmented:
        rows = rows[rows["augmentation"] == ORIGINAL]
    if rows.empty:
        raise ValueError(f"the feature table has no {split!r} rows")
    return rows.reset_index(drop=True)


def matrix(rows: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """``rows[columns]`` as float32, by position: for ComParE's 6,373 names a third the time."""
    positions = rows.columns.get_indexer(columns)
    if (positions < 0).any():
        missing = [name for name, at in zip(columns, positions, strict=True) if at < 0]
        raise KeyError(f"{len(missing)} feature column(s) missing, e.g. {missing[:3]}")
    return rows.iloc[:, positions].to_numpy(dtype=np.float32)


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
