"""``fusion``: the spectrogram CNN and logistic regression on clip features, averaged.

Both members are fitted as their own kinds; the weight of the CNN's probabilities is
the value of ``fusion.weights`` with the best UAR on the validation speakers (ties go
to the larger weight). A refit refits both members and keeps the weight.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ser.config import Params
from ser.metrics import uar
from ser.models import linear, spectrogram_cnn
from ser.models.base import CLIP_INPUT, FRAMES_INPUT, Callbacks, Fitted, Kind, Model, label_indices
from ser.ops.atomic import write_json

log = logging.getLogger(__name__)

WEIGHT_FILE = "fusion.json"
MEMBERS = {"spectrogram_cnn": spectrogram_cnn.KIND, "logreg": linear.LOGREG}


class Fusion(Model):
    kind = "fusion"

    def __init__(self, network: Model, linear_model: Model, weight: float) -> None:
        self.network, self.linear, self.weight = network, linear_model, weight

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        return combine(
            self.network.predict_proba(rows), self.linear.predict_proba(rows), self.weight
        )

    def save(self, directory: Path) -> list[Path]:
        saved = []
        for name, member in (("spectrogram_cnn", self.network), ("logreg", self.linear)):
            (directory / name).mkdir(parents=True, exist_ok=True)
            saved += member.save(directory / name)
        write_json(directory / WEIGHT_FILE, {"weight": self.weight})
        return [*saved, directory / WEIGHT_FILE]

    @classmethod
    def load(cls, directory: Path) -> Fusion:
        weight = json.loads((directory / WEIGHT_FILE).read_text())["weight"]
        network, linear_model = (kind.load(directory / name) for name, kind in MEMBERS.items())
        return cls(network, linear_model, weight)


def combine(network: np.ndarray, linear_model: np.ndarray, weight: float) -> np.ndarray:
    return (weight * network + (1 - weight) * linear_model).astype(np.float32)


def fit(
    train_rows: pd.DataFrame, val_rows: pd.DataFrame, params: Params, callbacks: Callbacks = ()
) -> Fitted:
    """Fit both members on training rows; choose the weight on validation rows."""
    parts = {
        name: kind.fit(train_rows, val_rows, params, callbacks if kind.suggest else ())
        for name, kind in MEMBERS.items()
    }
    network, linear_model = (parts[name].model for name in MEMBERS)
    from_network, from_linear = (
        network.predict_proba(val_rows),
        linear_model.predict_proba(val_rows),
    )
    truth = label_indices(val_rows)
    scored = {
        w: uar(truth, combine(from_network, from_linear, w).argmax(axis=1))
        for w in sorted(params.fusion.weights, reverse=True)
    }
    weight = max(scored, key=scored.get)
    log.info(
        "fusion weights on validation UAR: %s; chosen %.2f",
        ", ".join(f"{w:.2f}: {v:.3f}" for w, v in scored.items()),
        weight,
    )
    how = {"weight": weight, **parts["spectrogram_cnn"].how, **parts["logreg"].how}
    chosen = parts["logreg"].params  # with the C validation chose
    return Fitted(
        Fusion(network, linear_model, weight), chosen, parts["spectrogram_cnn"].curve, how, parts
    )


def refit(rows: pd.DataFrame, fitted: Fitted) -> Fusion:
    """Both members refitted on ``rows``, with the weight validation chose."""
    network, linear_model = (kind.refit(rows, fitted.parts[name]) for name, kind in MEMBERS.items())
    return Fusion(network, linear_model, fitted.how["weight"])


KIND = Kind(
    name="fusion",
    section="fusion",
    inputs=frozenset({CLIP_INPUT, FRAMES_INPUT}),
    fit=fit,
    refit=refit,
    load=Fusion.load,
)

KINDS = (KIND,)
