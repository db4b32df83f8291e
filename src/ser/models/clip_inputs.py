"""The clip-feature vector as the seed CNN and the linear kinds see it (``preprocessing``).

Fitted on training rows only and saved with the model: standardise, clip to
``±input_clip`` (if set), keep the ``select_k`` features of highest ANOVA F (if set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from ser.config import PreprocessingParams
from ser.models.base import ModelError, label_encoder, label_indices
from ser.ops.atomic import write_with
from ser.table.store import feature_columns, matrix

PREPROCESSING_FILE = "preprocessing.joblib"


def fit_preprocessing(
    values: np.ndarray, labels: np.ndarray, settings: PreprocessingParams
) -> Pipeline:
    """The preprocessing pipeline fitted on ``values`` (training rows) and their labels."""
    steps: list[tuple[str, object]] = [("scale", StandardScaler())]
    if settings.input_clip is not None:
        bound = {"a_min": -settings.input_clip, "a_max": settings.input_clip}
        clip = FunctionTransformer(np.clip, kw_args=bound, feature_names_out="one-to-one")
        steps.append(("clip", clip))
    if settings.select_k is not None and settings.select_k < values.shape[1]:
        steps.append(("select", SelectKBest(f_classif, k=settings.select_k)))
    return Pipeline(steps).fit(values, labels)


@dataclass
class ClipInputs:
    """The fitted preprocessing and the feature columns it reads, in order."""

    preprocessing: Pipeline
    feature_names: list[str]

    @property
    def width(self) -> int:
        """How many values per row the model sees (fewer than columns with ``select_k``)."""
        return len(self.preprocessing.get_feature_names_out())

    def transform(self, rows: pd.DataFrame) -> np.ndarray:
        return self.preprocessing.transform(matrix(rows, self.feature_names)).astype(np.float32)

    def save(self, directory: Path) -> Path:
        """Pipeline, feature names and the one-hot label encoder, in one file."""
        state = {
            "preprocessing": self.preprocessing,
            "feature_names": self.feature_names,
            "encoder": label_encoder(),
        }
        path = directory / PREPROCESSING_FILE
        write_with(path, lambda temporary: joblib.dump(state, temporary))
        return path

    @classmethod
    def load(cls, directory: Path) -> ClipInputs:
        path = directory / PREPROCESSING_FILE
        if not path.is_file():
            raise ModelError(f"{path}: missing (run the train stage again)")
        state = joblib.load(path)
        if "preprocessing" not in state:
            raise ModelError(
                f"{path}: saved by an older version of ser (no preprocessing pipeline); "
                "run the train stage again"
            )
        return cls(state["preprocessing"], state["feature_names"])


def fit_clip_inputs(rows: pd.DataFrame, settings: PreprocessingParams) -> ClipInputs:
    """Preprocessing fitted on ``rows`` over every clip-feature column."""
    columns = feature_columns(rows)
    return ClipInputs(
        fit_preprocessing(matrix(rows, columns), label_indices(rows), settings), columns
    )
