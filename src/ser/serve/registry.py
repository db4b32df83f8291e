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
from mlflow.exceptions import MlflowException

from ser import paths
from ser.config import Params
from ser.errors import SerError
from ser.ops.atomic import read_json
from ser.ops.tracking import connect, run_tags
from ser.serve import gate
from ser.serve.mlflow_model import log_model

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"


class RegistryError(SerError, RuntimeError):
    """No version to promote, or it cannot be judged; the message says why."""


def register_candidate(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    """Point alias ``candidate`` at a newly registered version and tag it."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CANDIDATE, version)


def workspace_version(record: Path = paths.TRAIN_RUN_ID) -> str | None:
    """The version this workspace's last train stage registered, if any."""
    return str(read_json(record)["version"]) if record.is_file() else None


def promote(params: Params, version: str | None = None, min_uar: float | None = None) -> str:
    """Move ``champion`` to ``version`` (default: this workspace's last trained version)
    when the test UAR its run logged passes the quality gate (``ser.serve.gate``) at
    ``min_uar`` (default ``quality_gate.min_test_uar``).

    Raise GateFailed, tagging the version ``quality_gate=failed``, when it does not; the
    champion then stays where it was. Return the promoted version.
    """
    name = params.mlflow.registered_model
    minimum = gate.threshold(params, min_uar)
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
        metrics = client.get_run(model_version.run_id).data.metrics
    except MlflowException as error:
        raise RegistryError(f"registered model {name!r}: {error.message}") from None
    subject = f"version {version} of {name}"
    try:
        scope, uar = gate.judge(metrics, subject, minimum)
    except gate.GateFailed as failed:
        client.set_model_version_tag(name, version, "quality_gate", "failed")
        stays = f"version {champion}" if champion else "unset"
        raise gate.GateFailed(f"{failed}; {CHAMPION} stays {stays}") from None
    client.set_model_version_tag(name, version, f"{scope}_uar", f"{uar:.4f}")
    client.set_model_version_tag(name, version, "quality_gate", "passed")
    client.set_registered_model_alias(name, CHAMPION, version)
    log.info(
        "quality gate: %s: %s UAR %.4f >= %.4f; %s is now version %s",
        subject,
        scope,
        uar,
        minimum,
        CHAMPION,
        version,
    )
    return version


def register_trained_model(
    models_dir: Path, params: Params, run_id: str, metrics: dict[str, float]
) -> dict[str, str]:
    """Log ``models_dir`` as the active run's MLflow Model, registered with alias ``candidate``."""
    name = params.mlflow.registered_model
    info = log_model(models_dir, registered_model=name)
    version = str(info.registered_model_version)
    tags = {
        "kind": params.model.kind,
        "val_uar": f"{metrics['val_uar']:.4f}",
        **{k: v for k, v in run_tags("train").items() if k != "ser.stage"},
    }
    register_candidate(MlflowClient(), name, version, tags)
    log.info("registered %s version %s (alias %s), run %s", name, version, CANDIDATE, run_id)
    return {"model_uri": info.model_uri, "registered_model": name, "version": version}
