"""The quality gate: a model is promoted only when its test UAR reaches a threshold.

``ser promote`` judges a registered model version by the test metrics ``evaluate`` logged
to its MLflow run; the scheduled DAG judges its run's ``reports/metrics.json``. Both read
the metrics under the same names and call :func:`judge`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ser.config import Params
from ser.errors import SerError

TEST_SCOPES = ("test", "test_speaker_normalised")
"""The scopes ``evaluate`` reports the test speakers' scores under; the second when clip
features were standardised per speaker with the test speakers' own statistics."""


class GateFailed(RuntimeError):
    """The test UAR is below the threshold: the model must not be promoted."""


class NoTestMetrics(SerError):
    """There is no test UAR to judge; the message names where it was looked for."""


def scoped(scope: str, values: Mapping[str, float]) -> dict[str, float]:
    """``{"uar": …}`` of a scope as the flat names logged to MLflow (``test_uar``)."""
    return {f"{scope}_{name}": value for name, value in values.items()}


def read_metrics(path: Path) -> dict[str, float]:
    """``reports/metrics.json`` (``{scope: {metric: value}}``) as flat names."""
    try:
        nested = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise NoTestMetrics(f"{path}: cannot read the test metrics ({error})") from None
    if not isinstance(nested, dict):
        raise NoTestMetrics(f"{path}: expected a mapping of scopes, got {type(nested).__name__}")
    return {
        name: value
        for scope, values in nested.items()
        if isinstance(values, dict)
        for name, value in scoped(scope, values).items()
    }


def headline(metrics: Mapping[str, object], source: str) -> tuple[str, float]:
    """The scope and test UAR among flat ``metrics``; ``source`` names where they came from."""
    for scope in TEST_SCOPES:
        value = metrics.get(f"{scope}_uar")
        if isinstance(value, int | float):
            return scope, float(value)
    names = " or ".join(f"{scope}_uar" for scope in TEST_SCOPES)
    raise NoTestMetrics(f"{source} has no test UAR ({names}); run the evaluate stage")


def threshold(params: Params, override: float | None = None) -> float:
    """``override``, else ``quality_gate.min_test_uar`` of the params."""
    return params.quality_gate.min_test_uar if override is None else override


def judge(metrics: Mapping[str, object], source: str, minimum: float) -> tuple[str, float]:
    """The headline scope and UAR of ``metrics``; GateFailed when the UAR is below ``minimum``."""
    scope, uar = headline(metrics, source)
    if uar < minimum:
        raise GateFailed(
            f"quality gate: {source}: {scope} UAR {uar:.4f} is below the threshold {minimum:.4f}"
        )
    return scope, uar
