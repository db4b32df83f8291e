"""The MLflow Model Registry: every training run's model becomes a new version of
``mlflow.registered_model`` with alias ``candidate``; :func:`promote` moves alias
``champion`` to a version only when its test UAR passes the quality gate.

``ser predict --model models:/<name>@champion`` and ``mlflow models serve -m
models:/<name>@champion`` then use the promoted model. A version is found by its model's
content (``ser.ops.tracking.MODELS_TAG``), so ``ser promote`` judges whatever ``models/``
holds, however it got there (``dvc repro``, ``dvc exp apply``, ``dvc checkout``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from ser import paths
from ser.config import Params
from ser.errors import SerError
from ser.ops.tracking import (
    MODELS_TAG,
    connect,
    content_sha256,
    run_tags,
    runs_tagged,
    tracking_uri,
)
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


def is_test_metric(name: str) -> bool:
    """Whether ``name`` is one of the test metrics ``evaluate`` logs (``test_uar``, …)."""
    return name.startswith(tuple(f"{scope}_" for scope in gate.TEST_SCOPES))


def workspace_version(client: MlflowClient, name: str, models_dir: Path = paths.MODELS_DIR) -> str:
    """The version of ``name`` whose model has the content of ``models_dir``.

    The same bytes may be registered more than once (two experiments that trained the same
    model): the newest version whose run has test metrics, else the newest.
    """
    if not (models_dir / "classifier.json").is_file():
        raise RegistryError(
            f"no model in {models_dir}/ to promote (run the train stage, or dvc pull); "
            "name a version with --version"
        )
    digest = content_sha256(models_dir)
    found = [v for v in client.search_model_versions(f"name = '{name}'") if _holds(v, digest)]
    if not found:
        raise RegistryError(
            f"the model in {models_dir}/ (sha256 {digest[:12]}) is no version of {name!r} in "
            f"{tracking_uri()}: it was trained with another MLflow store; name a version with "
            "--version"
        )
    found.sort(key=lambda version: int(version.version), reverse=True)
    tested = [v for v in found if any(map(is_test_metric, client.get_run(v.run_id).data.metrics))]
    return str((tested or found)[0].version)


def _holds(version: ModelVersion, digest: str) -> bool:
    return version.tags.get(MODELS_TAG) == digest


def promote(params: Params, version: str | None = None, min_uar: float | None = None) -> str:
    """Move ``champion`` to ``version`` (default: the version of the model in ``models/``)
    when the test UAR its run logged passes the quality gate (``ser.serve.gate``) at
    ``min_uar`` (default ``quality_gate.min_test_uar``).

    Raise GateFailed, tagging the version ``quality_gate=failed``, when it does not; the
    champion then stays where it was. Return the promoted version.
    """
    name = params.mlflow.registered_model
    minimum = gate.threshold(params, min_uar)
    connect()
    client = MlflowClient()
    version = version or workspace_version(client, name)
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
    models_dir: Path, params: Params, run_id: str, metrics: dict[str, float], tags: dict[str, str]
) -> None:
    """Log ``models_dir`` as the active run's MLflow Model, registered with alias ``candidate``
    and tagged with ``tags`` (:func:`ser.ops.tracking.model_tags`) among others."""
    name = params.mlflow.registered_model
    info = log_model(models_dir, registered_model=name)
    version = str(info.registered_model_version)
    version_tags = {
        "kind": params.model.kind,
        "val_uar": f"{metrics['val_uar']:.4f}",
        MODELS_TAG: tags[MODELS_TAG],
        **{k: v for k, v in run_tags("train").items() if k != "ser.stage"},
    }
    register_candidate(MlflowClient(), name, version, version_tags)
    log.info("registered %s version %s (alias %s), run %s", name, version, CANDIDATE, run_id)


def inherit_test_metrics(tags: dict[str, str], experiment: str) -> None:
    """Give the active run the test metrics of the newest other run with the same ``tags``
    (the same model scored on the same features), if there is one.

    DVC skips ``evaluate`` when its inputs equal those of an earlier run (or restores them
    from its run cache), so the test metrics a new training run of the same bytes would get
    are those; when ``evaluate`` does run, it logs its own over them.
    """
    active = mlflow.active_run().info.run_id
    for earlier in runs_tagged(tags, experiment):
        tested = {k: v for k, v in earlier.data.metrics.items() if is_test_metric(k)}
        if earlier.info.run_id != active and tested:
            mlflow.log_metrics(tested)
            mlflow.set_tag("ser.test_metrics_from", earlier.info.run_id)
            log.info("test metrics of run %s (the same model and features)", earlier.info.run_id)
            return
