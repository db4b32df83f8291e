"""The trained classifier as saved in ``models/``: network, scaler, label encoder, feature config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import joblib
import keras
import numpy as np
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ser import EMOTIONS
from ser.artifacts import write_with
from ser.config import AudioParams, FeatureParams

MODEL_FILE = "model.keras"
PREPROCESSING_FILE = "preprocessing.joblib"
FEATURE_CONFIG_FILE = "feature_config.json"
SAVED_FILES = (MODEL_FILE, PREPROCESSING_FILE, FEATURE_CONFIG_FILE)


def label_encoder() -> OneHotEncoder:
    """One-hot encoder over the seven labels, in a fixed order whatever the corpus."""
    encoder = OneHotEncoder(categories=[list(EMOTIONS)], sparse_output=False)
    return encoder.fit(np.array(EMOTIONS).reshape(-1, 1))


@dataclass
class Classifier:
    network: keras.Model
    scaler: StandardScaler
    encoder: OneHotEncoder
    feature_names: list[str]
    audio: AudioParams
    features: FeatureParams

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.encoder.categories_[0]]

    def prepare(self, values: np.ndarray) -> np.ndarray:
        """Standardise with training statistics and add the Conv1D channel axis."""
        return self.scaler.transform(values).astype(np.float32)[..., np.newaxis]

    def predict_proba(self, values: np.ndarray, batch_size: int = 256) -> np.ndarray:
        if len(values) == 0:
            return np.empty((0, len(self.classes)), np.float32)
        inputs = self.prepare(values)
        if len(inputs) <= batch_size:  # a compiled call, without predict()'s per-call set-up
            return np.asarray(self.network.predict_on_batch(inputs))
        return self.network.predict(inputs, batch_size=batch_size, verbose=0)

    def predict(self, values: np.ndarray) -> list[str]:
        probabilities = self.predict_proba(values)
        return [self.classes[i] for i in probabilities.argmax(axis=1)]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_with(directory / MODEL_FILE, self.network.save)
        preprocessing = {
            "scaler": self.scaler,
            "encoder": self.encoder,
            "feature_names": self.feature_names,
        }
        write_with(directory / PREPROCESSING_FILE, lambda path: joblib.dump(preprocessing, path))
        config = {
            "audio": self.audio.model_dump(mode="json"),
            "features": self.features.model_dump(mode="json", exclude={"workers", "cache_dir"}),
        }
        write_with(
            directory / FEATURE_CONFIG_FILE,
            lambda path: path.write_text(json.dumps(config, indent=2) + "\n"),
        )

    @classmethod
    def load(cls, directory: Path) -> Classifier:
        model_path = directory / MODEL_FILE
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: no trained model (run the train stage)")
        preprocessing = joblib.load(directory / PREPROCESSING_FILE)
        config = json.loads((directory / FEATURE_CONFIG_FILE).read_text())
        return cls(
            network=keras.models.load_model(model_path, compile=False),
            scaler=preprocessing["scaler"],
            encoder=preprocessing["encoder"],
            feature_names=preprocessing["feature_names"],
            audio=AudioParams(**config["audio"]),
            features=FeatureParams(**config["features"]),
        )
