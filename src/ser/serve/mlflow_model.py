"""The trained classifier as an MLflow Model: audio in, the label and every class probability out.

The request is a table with one row per clip and one column, ``audio``: the bytes of an
audio file (WAV, FLAC, OGG: whatever ``ser predict`` reads). Sending the file, not samples
or features, keeps decoding, resampling and feature extraction inside the model, exactly
as ``ser predict`` does them, so a client needs nothing but the file. The column is of
MLflow type ``binary``, which the scoring server takes base64-encoded in JSON (JSON has
no bytes; ``base64 -w0 clip.wav`` is all curl needs)::

    {"dataframe_records": [{"audio": "<base64 of clip.wav>"}]}

The answer has one row per clip: ``label`` and one probability column per emotion. A
request with an unusable clip fails as a whole with HTTP 400 naming the row and why.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import soundfile
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, Schema

import ser
from ser.models.bundle import Classifier
from ser.serve.predict import predict_clips

AUDIO_COLUMN = "audio"
LABEL_COLUMN = "label"
CLASSIFIER_ARTIFACT = "classifier"  # the models/ folder inside the MLflow Model
MODEL_NAME = "model"  # the logged model's name within its run
# what inference imports, pinned to the versions it was trained with (the ser package
# itself travels with the model as code)
RUNTIME_PACKAGES = (
    "mlflow",
    "tensorflow-cpu",
    "keras",
    "librosa",
    "opensmile",
    "soundfile",
    "soxr",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "joblib",
    "pydantic",
    "pyyaml",
    "threadpoolctl",
)


# MLflow decodes a binary column's base64 only in the dataframe_split / dataframe_records
# forms; "inputs" and "instances" hand the model the base64 text itself
BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]{16,}")
BASE64_HINT = (
    " (the audio looks like base64 text: send it in the dataframe_records or dataframe_split"
    " form, which MLflow decodes)"
)


class RequestError(MlflowException):
    """A request the model cannot answer; the scoring server returns it as HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def predict_table(classifier: Classifier, clips: pd.DataFrame) -> pd.DataFrame:
    """``label`` and the probability of each class for every row's ``audio`` bytes.

    The rows are one batch, as one ``ser predict`` call's files: a per-speaker normalised
    model takes them as one speaker's clips.
    """
    if AUDIO_COLUMN not in clips.columns:
        raise RequestError(f"no {AUDIO_COLUMN!r} column (got {list(map(str, clips.columns))})")
    if clips.empty:
        raise RequestError("no clips: the request has no rows")
    sources = []
    for row, value in enumerate(clips[AUDIO_COLUMN]):
        if not isinstance(value, bytes | bytearray):
            raise RequestError(f"row {row}: {AUDIO_COLUMN} must be the bytes of an audio file")
        sources.append((row, bytes(value)))
    labels, probabilities = [], []
    for row, label, result in predict_clips(sources, classifier, batch_size=len(sources)):
        if label is None:
            hint = BASE64_HINT if BASE64_TEXT.fullmatch(sources[row][1]) else ""
            raise RequestError(f"row {row}: {result}{hint}")
        labels.append(label)
        probabilities.append(result)
    table = pd.DataFrame(np.vstack(probabilities).astype(float), columns=classifier.classes)
    table.insert(0, LABEL_COLUMN, labels)
    return table


class AudioEmotionModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a saved :class:`Classifier`."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.classifier = Classifier.load(Path(context.artifacts[CLASSIFIER_ARTIFACT]))

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params=None
    ) -> pd.DataFrame:
        return predict_table(self.classifier, model_input)


def signature() -> ModelSignature:
    inputs = Schema([ColSpec(DataType.binary, AUDIO_COLUMN)])
    outputs = [ColSpec(DataType.string, LABEL_COLUMN)]
    outputs += [ColSpec(DataType.double, name) for name in Classifier.classes]
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def example_clip(sample_rate: int, seconds: float = 1.0) -> bytes:
    """A WAV file of a voiced-like tone (a fundamental and harmonics): a valid request row."""
    time = np.arange(int(sample_rate * seconds)) / sample_rate
    tone = sum(np.sin(2 * np.pi * 180 * k * time) / k for k in range(1, 6))
    buffer = io.BytesIO()
    soundfile.write(
        buffer,
        (0.3 * tone / np.abs(tone).max()).astype(np.float32),
        sample_rate,
        format="WAV",
        subtype="PCM_16",
    )
    return buffer.getvalue()


def log_model(models_dir: Path, registered_model: str | None = None) -> ModelInfo:
    """Log the classifier saved in ``models_dir`` as this run's MLflow Model (and register
    it as a new version of ``registered_model`` when given)."""
    classifier = Classifier.load(models_dir)
    example = pd.DataFrame({AUDIO_COLUMN: [example_clip(classifier.audio.sample_rate)]})
    with tempfile.TemporaryDirectory() as staging:
        # MLflow names an artifact folder after its source: make it artifacts/classifier
        folder = shutil.copytree(models_dir, Path(staging) / CLASSIFIER_ARTIFACT)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=AudioEmotionModel(),
            artifacts={CLASSIFIER_ARTIFACT: str(folder)},
            code_paths=[str(Path(ser.__file__).parent)],
            signature=signature(),
            input_example=example,
            pip_requirements=[f"{name}=={version(name)}" for name in RUNTIME_PACKAGES],
            registered_model_name=registered_model,
        )


def classifier_dir(model: str | Path) -> Path:
    """The saved classifier named by ``model``: a folder, or an MLflow model URI
    (``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``models:/m-<id>``) whose
    artifacts are downloaded from the tracking server."""
    if isinstance(model, Path) or ":/" not in model:
        return Path(model)
    from ser.ops.tracking import connect

    connect()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
    except MlflowException as error:
        raise FileNotFoundError(f"{model}: {error.message}") from None
    return local / "artifacts" / CLASSIFIER_ARTIFACT
