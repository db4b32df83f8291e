"""The MLflow Model Registry: every training run's model becomes a new version of
``mlflow.registered_model`` with alias ``candidate``; :func:`promote` moves alias
``champion`` to a version only when its test UAR passes the quality gate.

``ser predict --model models:/<name>@champion`` and ``mlflow models serve -m
models:/<name>@champion`` then use the promoted model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from ser import paths
from ser.artifacts import read_json
from ser.config import Params
from ser.tracking import connect

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
# evaluate logs the headline under one of these scopes (per-speaker normalisation uses
# the test speakers' own statistics); the gate names the one it read
TEST_SCOPES = ("test", "test_speaker_normalised")


class GateFailed(RuntimeError):
    """The version's test UAR is below the threshold; the champion stays where it was."""


class RegistryError(RuntimeError):
    """No version to promote, or it cannot be judged; the message says why."""


def register_candidate(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    """Point alias ``candidate`` at a newly registered version and tag it."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CANDIDATE, version)


def workspace_version(record: Path = paths.TRAIN_RUN_ID) -> str | None:
    """The version this workspace's last train stage registered, if any."""
    return str(read_json(record)["version"]) if record.is_file() else None


def tested_uar(client: MlflowClient, model_version: ModelVersion) -> tuple[str, float]:
    """The scope and test UAR evaluate logged to the run that trained ``model_version``."""
    metrics = client.get_run(model_version.run_id).data.metrics
    for scope in TEST_SCOPES:
        if f"{scope}_uar" in metrics:
            return scope, metrics[f"{scope}_uar"]
    raise RegistryError(
        f"version {model_version.version} of {model_version.name}: its run "
        f"{model_version.run_id} has no test UAR (run the evaluate stage)"
    )


def promote(params: Params, version: str | None = None, min_uar: float | None = None) -> str:
    """Move ``champion`` to ``version`` (default: this workspace's last trained version)
    when its test UAR reaches ``min_uar`` (default ``evaluate.min_test_uar``).

    Raise GateFailed, tagging the version ``quality_gate=failed``, when it does not; the
    champion then stays where it was. Return the promoted version.
    """
    name = params.mlflow.registered_model
    threshold = params.evaluate.min_test_uar if min_uar is None else min_uar
    version = version or workspace_version()
    if version is None:
        raise RegistryError(
            f"no version to promote: {paths.TRAIN_RUN_ID} is missing (the train stage did not "
            "run in this workspace); name one with --version"
        )
    connect()
    client = MlflowClient()
    try:
        model_version = client.get_model_version(name, version)
        champion = client.get_registered_model(name).aliases.get(CHAMPION)
    except MlflowException as error:
        raise RegistryError(f"registered model {name!r}: {error.message}") from None
    scope, uar = tested_uar(client, model_version)
    verdict = f"version {version} of {name}: {scope} UAR {uar:.4f}"
    client.set_model_version_tag(name, version, f"{scope}_uar", f"{uar:.4f}")
    if uar < threshold:
        client.set_model_version_tag(name, version, "quality_gate", "failed")
        stays = f"version {champion}" if champion else "unset"
        raise GateFailed(
            f"quality gate: {verdict} is below the threshold {threshold:.4f}; "
            f"{CHAMPION} stays {stays}"
        )
    client.set_model_version_tag(name, version, "quality_gate", "passed")
    client.set_registered_model_alias(name, CHAMPION, version)
    log.info(
        "quality gate: %s >= %.4f; %s is now version %s", verdict, threshold, CHAMPION, version
    )
    return version
