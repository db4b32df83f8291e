"""``ser predict``: label audio files with the trained model.

Each clip gets an emotion; or ``no_speech`` when the speech gate hears too little speech in
it; or ``uncertain`` when the model was saved with an uncertain threshold and its top
calibrated probability is below it; or it is refused (unreadable, too long, …) with the
reason. The MLflow Model answers with the same function.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from ser.corpus.manifest import AUDIO_SUFFIXES
from ser.models.base import CLIP_INPUT, FRAMES_INPUT
from ser.models.bundle import Classifier
from ser.signal.audio import BadAudio, condition, decode, require_finite
from ser.signal.features import clip_features, feature_names, logmel_frames
from ser.signal.speech import ClipStats, describe, no_speech_reason
from ser.table.store import FRAMES_COLUMN, speaker_statistics

log = logging.getLogger(__name__)

NO_SPEECH = "no_speech"
"""The label of a clip with too little speech to judge (``ser.signal.speech``)."""
UNCERTAIN = "uncertain"
"""The label of a clip whose top calibrated probability is below the model's threshold."""


def audio_files(inputs: Iterable[Path]) -> Iterator[Path]:
    """The given files, and the audio files found by walking the given folders.

    A folder whose name ends like an audio file (``take.wav/``) is walked like any other.
    Raise FileNotFoundError naming a folder that holds no audio file.
    """
    for item in inputs:
        if item.is_dir():
            found = sorted(
                p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and not p.is_dir()
            )
            if not found:
                suffixes = ", ".join(sorted(AUDIO_SUFFIXES))
                raise FileNotFoundError(f"{item}: no audio files ({suffixes})")
            yield from found
        else:
            yield item


@dataclass
class Answer:
    """What ``ser predict`` and the MLflow Model say about one clip."""

    key: object  # the caller's name for the clip: its path, a row number
    label: str | None  # an emotion, NO_SPEECH or UNCERTAIN; None: the clip was refused
    probabilities: np.ndarray | None  # calibrated, in ``Classifier.classes`` order, when run
    reason: str | None  # why there is no emotion (refused, no speech, uncertain)
    stats: ClipStats | None  # the audio as given, when it could be decoded

    @property
    def refused(self) -> bool:
        return self.label is None


def featurise(
    signal: np.ndarray, classifier: Classifier
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The clip-feature vector and the frames of one conditioned signal, each only if the
    model reads it, computed exactly as for training."""
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


def examine(
    key: object, source: Path | bytes, classifier: Classifier
) -> Answer | tuple[np.ndarray, ClipStats]:
    """The conditioned signal and the statistics of a clip the model should hear, or the
    Answer the clip gets without it: refused (with the reason) or ``no_speech`` (the gate)."""
    stats = None
    try:
        samples, rate = decode(source, classifier.audio.max_duration)
        require_finite(samples)
        stats = describe(samples, rate, classifier.speech.threshold)
        if reason := no_speech_reason(stats, classifier.speech):
            return Answer(key, NO_SPEECH, None, reason, stats)
        return condition(samples, rate, classifier.audio), stats
    except (BadAudio, OSError) as error:
        return Answer(key, None, None, str(error), stats)


def feature_rows(
    vectors: list[np.ndarray | None], frames: list[np.ndarray | None], classifier: Classifier
) -> pd.DataFrame:
    """Rows shaped like the feature table's, for ``classifier.predict_proba``.

    A model trained with ``features.speaker_norm: per_speaker`` takes all the clips
    as one speaker's and standardises their vectors together.
    """
    if CLIP_INPUT in classifier.inputs:
        values = np.vstack(vectors)
        if classifier.speaker_normalised:
            mean, spread = speaker_statistics(values)
            values = (values - mean) / spread
        # one block from the matrix: a column at a time costs ComParE's 6,373 columns 18 ms
        rows = pd.DataFrame(values, columns=feature_names(classifier.features))
    else:
        rows = pd.DataFrame(index=range(len(vectors)))
    if FRAMES_INPUT in classifier.inputs:
        rows[FRAMES_COLUMN] = frames
    return rows


def answered(key: object, stats: ClipStats, row: np.ndarray, classifier: Classifier) -> Answer:
    """The top emotion of calibrated probabilities, or UNCERTAIN below the model's threshold."""
    if classifier.calibration.is_uncertain(row):
        reason = (
            f"uncertain: top probability {row.max():.2f} is below "
            f"{classifier.calibration.uncertain_below:.2f} (calibration.uncertain_min_accuracy)"
        )
        return Answer(key, UNCERTAIN, row, reason, stats)
    return Answer(key, classifier.classes[int(row.argmax())], row, None, stats)


def predict_clips(
    clips: Iterable[tuple[object, Path | bytes]], classifier: Classifier, batch_size: int = 32
) -> Iterator[Answer]:
    """One Answer per clip, in order. A clip is a file or the bytes of one, under a key of
    the caller's (its path, a row number). A per-speaker normalised model takes all the
    clips as one speaker's."""
    per_speaker = classifier.speaker_normalised
    clips = iter(clips)
    while batch := list(islice(clips, None if per_speaker else batch_size)):
        answers: list[Answer | None] = []
        heard: list[tuple[int, object, ClipStats]] = []
        vectors, frames = [], []
        for key, source in batch:
            examined = examine(key, source, classifier)
            if isinstance(examined, Answer):
                answers.append(examined)
                continue
            signal, stats = examined
            heard.append((len(answers), key, stats))
            answers.append(None)
            vector, clip_frames = featurise(signal, classifier)
            vectors.append(vector)
            frames.append(clip_frames)
        if per_speaker and len(heard) == 1:
            index, key, stats = heard[0]
            reason = "per-speaker normalisation needs 2 or more clips of the speaker"
            answers[index] = Answer(key, None, None, reason, stats)
        elif heard:
            rows = classifier.predict_proba(feature_rows(vectors, frames, classifier))
            for (index, key, stats), row in zip(heard, rows, strict=True):
                answers[index] = answered(key, stats, row, classifier)
        yield from answers


def predict_files(
    inputs: Iterable[Path], classifier: Classifier, batch_size: int = 32
) -> Iterator[Answer]:
    """One Answer per file of ``inputs`` (files, not folders: see ``audio_files``)."""
    return predict_clips(((path, path) for path in inputs), classifier, batch_size)


def csv_row(answer: Answer) -> list[str]:
    """path, label, the probabilities (empty without them), speech ratio, reason."""
    probabilities = (
        [f"{p:.4f}" for p in answer.probabilities]
        if answer.probabilities is not None
        else [""] * len(Classifier.classes)
    )
    ratio = f"{answer.stats.speech_ratio:.3f}" if answer.stats else ""
    return [str(answer.key), answer.label, *probabilities, ratio, answer.reason or ""]


def json_record(answer: Answer) -> dict[str, object]:
    """path, label, probabilities (null without them), speech ratio, reason (null without one)."""
    probabilities = (
        dict(zip(Classifier.classes, map(float, answer.probabilities), strict=True))
        if answer.probabilities is not None
        else None
    )
    return {
        "path": str(answer.key),
        "label": answer.label,
        "probabilities": probabilities,
        "speech_ratio": answer.stats.speech_ratio if answer.stats else None,
        "reason": answer.reason,
    }


def write_predictions(
    inputs: list[Path],
    model: str | Path,
    as_json: bool,
    out: TextIO | None = None,
    log_to: str | Path | None = None,
) -> int:
    """Print one CSV line (or JSON object) per file to ``out`` (default stdout); return how
    many files were refused (reported on the log with the reason, not printed).

    ``model`` is a folder (``models/``) or an MLflow model URI (``models:/<name>@champion``).
    With ``log_to`` (a folder or a postgresql:// URL) every answer is also recorded in the
    inference log (``ser.serve.inference_log``).
    """
    from ser.serve.inference_log import InferenceLog, ModelIdentity, content_version, sink_for
    from ser.serve.mlflow_model import classifier_dir

    out = out or sys.stdout
    files = list(audio_files(inputs))  # an empty folder fails before the model loads
    directory = classifier_dir(model)
    classifier = Classifier.load(directory)
    inference_log = (
        InferenceLog(
            sink_for(log_to), ModelIdentity(str(model), content_version(directory)), "predict"
        )
        if log_to
        else None
    )
    writer = csv.writer(out)
    if not as_json:
        writer.writerow(["path", "label", *classifier.classes, "speech_ratio", "reason"])
    failures = 0
    try:
        for answer in predict_files(files, classifier):
            if inference_log:
                inference_log.record([answer])
            if answer.refused:
                failures += 1
                log.error("%s: %s", answer.key, answer.reason)
                continue
            if as_json:
                out.write(json.dumps(json_record(answer)) + "\n")
            else:
                writer.writerow(csv_row(answer))
            out.flush()
    finally:
        if inference_log:
            inference_log.close()
            log.info("%s (%s)", inference_log.summary(), log_to)
    return failures
