"""``ser predict``: label audio files with the trained model."""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TextIO

import numpy as np

from ser.audio import BadAudio, load_clip
from ser.classifier import Classifier
from ser.dataset import speaker_statistics
from ser.features import clip_features
from ser.manifest import AUDIO_SUFFIXES

log = logging.getLogger(__name__)


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


def featurise(path: Path, classifier: Classifier) -> np.ndarray:
    """The feature vector of one file, computed exactly as for training."""
    signal = load_clip(path, classifier.audio)
    return clip_features(signal, classifier.audio.sample_rate, classifier.features)


def predict_files(
    inputs: Iterable[Path], classifier: Classifier, batch_size: int = 32
) -> Iterator[tuple[Path, str | None, np.ndarray | str]]:
    """Yield (path, label, probabilities) per file, or (path, None, reason) when unusable.

    A model trained with ``features.speaker_norm: per_speaker`` takes all inputs
    as clips of one speaker and standardises them together.
    """
    per_speaker = classifier.features.speaker_norm == "per_speaker"
    files = audio_files(inputs)
    while batch := list(islice(files, None if per_speaker else batch_size)):
        usable, vectors = [], []
        for path in batch:
            try:
                vectors.append(featurise(path, classifier))
                usable.append(path)
            except (BadAudio, OSError) as error:
                yield path, None, str(error)
        if not usable:
            continue
        values = np.vstack(vectors)
        if per_speaker:
            if len(values) < 2:
                yield (
                    usable[0],
                    None,
                    "per-speaker normalisation needs 2 or more clips of the speaker",
                )
                return
            mean, spread = speaker_statistics(values)
            values = (values - mean) / spread
        probabilities = classifier.predict_proba(values)
        for path, row in zip(usable, probabilities, strict=True):
            yield path, classifier.classes[int(row.argmax())], row


def write_predictions(
    inputs: list[Path], model_dir: Path, as_json: bool, out: TextIO | None = None
) -> int:
    """Print one CSV line (or JSON object) per file to ``out`` (default stdout); return failures."""
    out = out or sys.stdout
    files = list(audio_files(inputs))  # an empty folder fails before the model loads
    classifier = Classifier.load(model_dir)
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
