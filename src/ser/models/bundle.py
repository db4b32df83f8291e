"""The trained classifier as saved in ``models/``: a model of one kind, the feature
configuration its inputs were computed with, its speech gate and its calibration
(``classifier.json``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from ser import EMOTIONS
from ser.config import AudioParams, FeatureParams, FrameParams, SpeechParams
from ser.models import kind_named
from ser.models.base import CLIP_INPUT, Model, ModelError
from ser.models.calibration import Calibration

CLASSIFIER_FILE = "classifier.json"


@dataclass
class Classifier:
    """A fitted model of ``kind``, how the audio and features it reads were computed, which
    clips it answers (``speech``) and how its probabilities are calibrated."""

    kind: str
    model: Model
    audio: AudioParams
    features: FeatureParams
    frames: FrameParams
    speech: SpeechParams = field(default_factory=SpeechParams)
    calibration: Calibration = field(default_factory=Calibration)

    classes: ClassVar[list[str]] = list(EMOTIONS)

    @property
    def inputs(self) -> frozenset[str]:
        """What the model reads of each row: ``clip`` (the feature vector), ``frames``."""
        return kind_named(self.kind).inputs

    @property
    def speaker_normalised(self) -> bool:
        """Whether its clip features were standardised per speaker (frames never are)."""
        return CLIP_INPUT in self.inputs and self.features.speaker_norm == "per_speaker"

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        """Calibrated class probabilities (``EMOTIONS`` order) of each row."""
        return self.calibration.apply(self.model.predict_proba(rows))

    def predict(self, rows: pd.DataFrame) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(rows).argmax(axis=1)]

    def save(self, directory: Path) -> list[Path]:
        """Replace ``directory`` with this classifier; return the files written (relative).

        Written into a sibling folder first and swapped in, so a failure leaves the old
        folder as it was and no file of another kind stays behind.
        """
        staging = directory.with_name(f".{directory.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        written = self.model.save(staging)
        config = {
            "kind": self.kind,
            "classes": self.classes,
            "audio": self.audio.model_dump(mode="json"),
            "features": self.features.model_dump(mode="json", exclude={"workers", "cache_dir"}),
            "frames": self.frames.model_dump(mode="json"),
            "speech": self.speech.model_dump(mode="json"),
            "calibration": self.calibration.as_dict(),
        }
        (staging / CLASSIFIER_FILE).write_text(json.dumps(config, indent=2) + "\n")
        previous = directory.with_name(f".{directory.name}.previous")
        shutil.rmtree(previous, ignore_errors=True)
        if directory.exists():
            directory.rename(previous)
        staging.rename(directory)
        shutil.rmtree(previous, ignore_errors=True)
        return [directory / p.relative_to(staging) for p in [*written, staging / CLASSIFIER_FILE]]

    @classmethod
    def load(cls, directory: Path) -> Classifier:
        path = directory / CLASSIFIER_FILE
        if not path.is_file():
            if any(directory.glob("*.joblib")) or any(directory.glob("*.keras")):
                raise ModelError(
                    f"{directory}: saved by an older version of ser (no {CLASSIFIER_FILE}); "
                    "run the train stage again"
                )
            raise FileNotFoundError(f"{path}: no trained model (run the train stage)")
        config = json.loads(path.read_text())
        try:
            kind = kind_named(config["kind"])
        except (KeyError, ValueError) as error:
            raise ModelError(f"{path}: {error}") from None
        return cls(
            kind=kind.name,
            model=kind.load(directory),
            audio=AudioParams(**config["audio"]),
            # saved before features.sample_rate existed: the features read the full rate
            features=FeatureParams(**{"sample_rate": None, **config["features"]}),
            frames=FrameParams(**config["frames"]),
            speech=SpeechParams(**config.get("speech", {})),
            calibration=Calibration(**config.get("calibration", {})),
        )
