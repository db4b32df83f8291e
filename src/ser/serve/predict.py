"""``ser predict``: label audio files with the trained model."""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TextIO, TypeVar

import numpy as np
import pandas as pd

from ser.corpus.manifest import AUDIO_SUFFIXES
from ser.models.base import CLIP_INPUT, FRAMES_INPUT
from ser.models.bundle import Classifier
from ser.signal.audio import BadAudio, load_clip
from ser.signal.features import clip_features, feature_names, logmel_frames
from ser.table.store import FRAMES_COLUMN, speaker_statistics

log = logging.getLogger(__name__)
Key = TypeVar("Key")


def audio_files(inputs: Iterable[Path]) -> Iterator[Path]:
    """The given files, and the audio files found by walking the given folders.

    Raise FileNotFoundError naming a folder that holds no audio file.
    """
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                suffixes = ", ".join(sorted(AUDIO_SUFFIXES))
                raise FileNotFoundError(f"{item}: no audio files ({suffixes})")
            yield from found
        else:
            yield item


def featurise(
    source: Path | bytes, classifier: Classifier
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The clip-feature vector and the frames of one file (or its bytes), each only if the
    model reads it, computed exactly as for training."""
    signal = load_clip(source, classifier.audio)
    rate = classifier.audio.sample_rate
    vector = (
        clip_features(signal, rate, classifier.features)
        if CLIP_INPUT in classifier.inputs
        else None
    )
    frames = (
        logmel_frames(signal, rate, classifier.frames)
        if FRAMES_INPUT in classifier.inputs
        else None
    )
    return vector, frames


def feature_rows(
    vectors: list[np.ndarray | None], frames: list[np.ndarray | None], classifier: Classifier
) -> pd.DataFrame:
    """Rows shaped like the feature table's, for ``classifier.predict_proba``.

    A model trained with ``features.speaker_norm: per_speaker`` takes all the clips
    as one speaker's and standardises their vectors together.
    """
    columns: dict[str, object] = {}
    if CLIP_INPUT in classifier.inputs:
        values = np.vstack(vectors)
        if classifier.speaker_normalised:
            mean, spread = speaker_statistics(values)
            values = (values - mean) / spread
        columns |= dict(zip(feature_names(classifier.features), values.T, strict=True))
    if FRAMES_INPUT in classifier.inputs:
        columns[FRAMES_COLUMN] = frames
    return pd.DataFrame(columns, index=range(len(vectors)))


def predict_clips(
    clips: Iterable[tuple[Key, Path | bytes]], classifier: Classifier, batch_size: int = 32
) -> Iterator[tuple[Key, str | None, np.ndarray | str]]:
    """Yield (key, label, probabilities) per clip, or (key, None, reason) when unusable.

    A clip is a file or the bytes of one, under a key of the caller's (its path, a row
    number). A per-speaker normalised model takes all the clips as one speaker's.
    """
    per_speaker = classifier.speaker_normalised
    clips = iter(clips)
    while batch := list(islice(clips, None if per_speaker else batch_size)):
        usable, vectors, frames = [], [], []
        for key, source in batch:
            try:
                vector, clip_frames = featurise(source, classifier)
            except (BadAudio, OSError) as error:
                yield key, None, str(error)
                continue
            usable.append(key)
            vectors.append(vector)
            frames.append(clip_frames)
        if not usable:
            continue
        if per_speaker and len(usable) < 2:
            yield usable[0], None, "per-speaker normalisation needs 2 or more clips of the speaker"
            return
        probabilities = classifier.predict_proba(feature_rows(vectors, frames, classifier))
        for key, row in zip(usable, probabilities, strict=True):
            yield key, classifier.classes[int(row.argmax())], row


def predict_files(
    inputs: Iterable[Path], classifier: Classifier, batch_size: int = 32
) -> Iterator[tuple[Path, str | None, np.ndarray | str]]:
    """Yield (path, label, probabilities) per file, or (path, None, reason) when unusable."""
    return predict_clips(((path, path) for path in audio_files(inputs)), classifier, batch_size)


def write_predictions(
    inputs: list[Path], model: str | Path, as_json: bool, out: TextIO | None = None
) -> int:
    """Print one CSV line (or JSON object) per file to ``out`` (default stdout); return failures.

    ``model`` is a folder (``models/``) or an MLflow model URI (``models:/<name>@champion``).
    """
    from ser.serve.mlflow_model import classifier_dir

    out = out or sys.stdout
    files = list(audio_files(inputs))  # an empty folder fails before the model loads
    classifier = Classifier.load(classifier_dir(model))
    writer = csv.writer(out)
    if not as_json:
        writer.writerow(["path", "label", *classifier.classes])
    failures = 0
    for path, label, result in predict_files(files, classifier):
        if label is None:
            failures += 1
            log.error("%s: %s", path, result)
            continue
        if as_json:
            probabilities = dict(zip(classifier.classes, map(float, result), strict=True))
            record = {"path": str(path), "label": label, "probabilities": probabilities}
            out.write(json.dumps(record) + "\n")
        else:
            writer.writerow([str(path), label, *(f"{p:.4f}" for p in result)])
        out.flush()
    return failures
