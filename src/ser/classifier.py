"""The trained classifier as saved in ``models/``: estimator, preprocessing, encoder, feature config.

The estimator is the seed CNN (a keras network, ``model.keras``) or a scikit-learn
baseline (``model.joblib``); everything else is saved the same way for every kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import joblib
import keras
import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from ser import EMOTIONS
from ser.artifacts import write_with
from ser.config import AudioParams, FeatureParams, ModelParams

NETWORK_FILE = "model.keras"
ESTIMATOR_FILE = "model.joblib"
PREPROCESSING_FILE = "preprocessing.joblib"
FEATURE_CONFIG_FILE = "feature_config.json"


class ModelError(ValueError):
    """A models folder that cannot be loaded as it is; the message names the file."""


def label_encoder() -> OneHotEncoder:
    """One-hot encoder over the seven labels, in a fixed order whatever the corpus."""
    encoder = OneHotEncoder(categories=[list(EMOTIONS)], sparse_output=False)
    return encoder.fit(np.array(EMOTIONS).reshape(-1, 1))


def fit_preprocessing(values: np.ndarray, labels: np.ndarray, hp: ModelParams) -> Pipeline:
    """Fitted on training rows only: standardise, clip to ``±hp.input_clip`` (if set), then
    keep the ``hp.select_k`` features (if set) with the highest ANOVA F over ``labels``."""
    steps: list[tuple[str, object]] = [("scale", StandardScaler())]
    if hp.input_clip is not None:
        bound = {"a_min": -hp.input_clip, "a_max": hp.input_clip}
        clip = FunctionTransformer(np.clip, kw_args=bound, feature_names_out="one-to-one")
        steps.append(("clip", clip))
    if hp.select_k is not None and hp.select_k < values.shape[1]:
        steps.append(("select", SelectKBest(f_classif, k=hp.select_k)))
    return Pipeline(steps).fit(values, labels)


@dataclass
class Classifier:
    """A keras network or a scikit-learn estimator fitted on label indices (``EMOTIONS`` order)."""

    estimator: keras.Model | ClassifierMixin
    preprocessing: Pipeline
    encoder: OneHotEncoder
    feature_names: list[str]
    audio: AudioParams
    features: FeatureParams

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.encoder.categories_[0]]

    @property
    def is_network(self) -> bool:
        return isinstance(self.estimator, keras.Model)

    def prepare(self, values: np.ndarray) -> np.ndarray:
        """Preprocess as fitted on training rows (and add the Conv1D channel axis for the CNN)."""
        scaled = self.preprocessing.transform(values).astype(np.float32)
        return scaled[..., np.newaxis] if self.is_network else scaled

    def predict_proba(self, values: np.ndarray, batch_size: int = 256) -> np.ndarray:
        if len(values) == 0:
            return np.empty((0, len(self.classes)), np.float32)
        inputs = self.prepare(values)
        if not self.is_network:  # columns of the classes seen in training, zeros elsewhere
            probabilities = np.zeros((len(inputs), len(self.classes)), np.float32)
            probabilities[:, self.estimator.classes_] = self.estimator.predict_proba(inputs)
            return probabilities
        if len(inputs) <= batch_size:  # a compiled call, without predict()'s per-call set-up
            return np.asarray(self.estimator.predict_on_batch(inputs))
        return self.estimator.predict(inputs, batch_size=batch_size, verbose=0)

    def predict(self, values: np.ndarray) -> list[str]:
        probabilities = self.predict_proba(values)
        return [self.classes[i] for i in probabilities.argmax(axis=1)]

    def save(self, directory: Path) -> list[Path]:
        """Write the estimator, preprocessing and feature config; return the files written."""
        directory.mkdir(parents=True, exist_ok=True)
        if self.is_network:
            model_path, stale = directory / NETWORK_FILE, directory / ESTIMATOR_FILE
            write_with(model_path, self.estimator.save)
        else:
            model_path, stale = directory / ESTIMATOR_FILE, directory / NETWORK_FILE
            write_with(model_path, lambda path: joblib.dump(self.estimator, path))
        stale.unlink(missing_ok=True)  # a model of the other kind would make loading ambiguous
        preprocessing = {
            "preprocessing": self.preprocessing,
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
        return [model_path, directory / PREPROCESSING_FILE, directory / FEATURE_CONFIG_FILE]

    @classmethod
    def load(cls, directory: Path) -> Classifier:
        network_path, estimator_path = directory / NETWORK_FILE, directory / ESTIMATOR_FILE
        if network_path.is_file() and estimator_path.is_file():
            raise ModelError(f"{directory}: both {NETWORK_FILE} and {ESTIMATOR_FILE}; remove one")
        if network_path.is_file():
            estimator = keras.models.load_model(network_path, compile=False)
        elif estimator_path.is_file():
            estimator = joblib.load(estimator_path)
        else:
            raise FileNotFoundError(
                f"{directory}: neither {NETWORK_FILE} nor {ESTIMATOR_FILE}, "
                "no trained model (run the train stage)"
            )
        preprocessing = joblib.load(directory / PREPROCESSING_FILE)
        if "preprocessing" not in preprocessing:
            raise ModelError(
                f"{directory / PREPROCESSING_FILE}: saved by an older version of ser "
                "(no preprocessing pipeline); run the train stage again"
            )
        config = json.loads((directory / FEATURE_CONFIG_FILE).read_text())
        return cls(
            estimator=estimator,
            preprocessing=preprocessing["preprocessing"],
            encoder=preprocessing["encoder"],
            feature_names=preprocessing["feature_names"],
            audio=AudioParams(**config["audio"]),
            features=FeatureParams(**config["features"]),
        )
