"""``fusion``: the spectrogram CNN and logistic regression on clip features, pooled.

Both members are fitted as their own kinds, then pooled with two weights chosen on the
validation speakers (``fusion.pooling``):

- ``average`` (the default): a p_cnn + (1 - a) p_logreg, with a the value of
  ``fusion.weights`` of best validation UAR (ties go to the larger weight); averaging
  blurs the answer, which the temperature then sharpens.
- ``log_linear``: softmax(a log p_cnn + b log p_logreg), a and b fitted together by the
  validation log-likelihood. The weights set both each member's share and the sharpness
  of the answer, so the pooled probabilities come out calibrated; a member sure of a wrong
  answer weighs more than in an average, which costs accuracy in noise
  (docs/benchmarks.md).

A refit refits both members and keeps the weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import log_softmax

from ser.config import FusionPooling, Params
from ser.metrics import uar
from ser.models import linear, spectrogram_cnn
from ser.models.base import CLIP_INPUT, FRAMES_INPUT, Callbacks, Fitted, Kind, Model, label_indices
from ser.models.calibration import log_probabilities
from ser.ops.atomic import write_json

log = logging.getLogger(__name__)

WEIGHT_FILE = "fusion.json"
MEMBERS = {"spectrogram_cnn": spectrogram_cnn.KIND, "logreg": linear.LOGREG}
LOG_LINEAR_BOUNDS = (0.0, 20.0)
"""Each log-linear weight's range: 0 leaves a member out, 20 sharpens far past any need."""

Weights = tuple[float, float]  # the network's, the linear model's


class Fusion(Model):
    kind = "fusion"

    def __init__(
        self, network: Model, linear_model: Model, pooling: FusionPooling, weights: Weights
    ) -> None:
        self.network, self.linear = network, linear_model
        self.pooling, self.weights = pooling, weights

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        return combine(
            self.network.predict_proba(rows),
            self.linear.predict_proba(rows),
            self.pooling,
            self.weights,
        )

    def save(self, directory: Path) -> list[Path]:
        saved = []
        for name, member in (("spectrogram_cnn", self.network), ("logreg", self.linear)):
            (directory / name).mkdir(parents=True, exist_ok=True)
            saved += member.save(directory / name)
        write_json(directory / WEIGHT_FILE, {"pooling": self.pooling, "weights": self.weights})
        return [*saved, directory / WEIGHT_FILE]

    @classmethod
    def load(cls, directory: Path) -> Fusion:
        saved = json.loads((directory / WEIGHT_FILE).read_text())
        if "pooling" in saved:
            pooling, weights = saved["pooling"], tuple(saved["weights"])
        else:  # saved before log-linear pooling: {"weight": the network's share}
            pooling, weights = "average", (saved["weight"], 1 - saved["weight"])
        network, linear_model = (kind.load(directory / name) for name, kind in MEMBERS.items())
        return cls(network, linear_model, pooling, weights)


def combine(
    network: np.ndarray, linear_model: np.ndarray, pooling: FusionPooling, weights: Weights
) -> np.ndarray:
    """The pooled probabilities of each row (see the module's docstring)."""
    a, b = weights
    if pooling == "average":
        return (a * network + b * linear_model).astype(np.float32)
    return np.exp(
        log_softmax(a * log_probabilities(network) + b * log_probabilities(linear_model), axis=1)
    ).astype(np.float32)


def fit_log_linear(network: np.ndarray, linear_model: np.ndarray, truth: np.ndarray) -> Weights:
    """The two weights that maximise the log-likelihood of ``truth`` (a convex problem)."""
    logs = np.stack([log_probabilities(network), log_probabilities(linear_model)])
    rows = np.arange(len(truth))

    def loss(weights: np.ndarray) -> float:
        return float(-np.mean(log_softmax(np.tensordot(weights, logs, 1), axis=1)[rows, truth]))

    result = minimize(loss, [0.5, 0.5], method="L-BFGS-B", bounds=[LOG_LINEAR_BOUNDS] * 2)
    return float(result.x[0]), float(result.x[1])


def best_average(
    network: np.ndarray, linear_model: np.ndarray, truth: np.ndarray, candidates: list[float]
) -> Weights:
    """The network's share among ``candidates`` with the best UAR (ties: the larger share)."""
    scored = {
        w: uar(truth, combine(network, linear_model, "average", (w, 1 - w)).argmax(axis=1))
        for w in sorted(candidates, reverse=True)
    }
    log.info(
        "fusion weights on validation UAR: %s",
        ", ".join(f"{w:.2f}: {v:.3f}" for w, v in scored.items()),
    )
    weight = max(scored, key=scored.get)
    return weight, 1 - weight


def fit(
    train_rows: pd.DataFrame, val_rows: pd.DataFrame, params: Params, callbacks: Callbacks = ()
) -> Fitted:
    """Fit both members on training rows; choose the pooling weights on validation rows."""
    parts = {
        name: kind.fit(train_rows, val_rows, params, callbacks if kind.suggest else ())
        for name, kind in MEMBERS.items()
    }
    network, linear_model = (parts[name].model for name in MEMBERS)
    from_network, from_linear = (
        network.predict_proba(val_rows),
        linear_model.predict_proba(val_rows),
    )
    truth, pooling = label_indices(val_rows), params.fusion.pooling
    if pooling == "average":
        weights = best_average(from_network, from_linear, truth, params.fusion.weights)
    else:
        weights = fit_log_linear(from_network, from_linear, truth)
    log.info("fusion %s weights: network %.3f, logreg %.3f", pooling, *weights)
    how = {
        "network_weight": weights[0],
        "linear_weight": weights[1],
        **parts["spectrogram_cnn"].how,
        **parts["logreg"].how,
    }
    chosen = parts["logreg"].params  # with the C validation chose
    return Fitted(
        Fusion(network, linear_model, pooling, weights),
        chosen,
        parts["spectrogram_cnn"].curve,
        how,
        parts,
    )


def refit(rows: pd.DataFrame, fitted: Fitted) -> Fusion:
    """Both members refitted on ``rows``, pooled with the weights validation chose."""
    network, linear_model = (kind.refit(rows, fitted.parts[name]) for name, kind in MEMBERS.items())
    chosen = fitted.model
    return Fusion(network, linear_model, chosen.pooling, chosen.weights)


KIND = Kind(
    name="fusion",
    section="fusion",
    inputs=frozenset({CLIP_INPUT, FRAMES_INPUT}),
    fit=fit,
    refit=refit,
    load=Fusion.load,
)

KINDS = (KIND,)
