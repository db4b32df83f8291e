"""Scheduled reproduction of the SER pipeline: `dvc pull` → `dvc repro` → quality gate → `dvc push`.

The tasks run one after another in one DVC workspace (the project directory), so
two runs must never overlap: `max_active_runs=1`. The quality gate reads
`reports/metrics.json` and fails the run when the test UAR is below the threshold;
a failed repro or gate means nothing is pushed.

Every setting is looked up as the Airflow Variable `ser_<name>`, else the
environment variable `SER_<NAME>`, else a default (docs/airflow.md has the table):

| name                    | default                                          | read at   |
|-------------------------|--------------------------------------------------|-----------|
| `project_dir`           | the repository holding this `dags/` folder       | run time  |
| `dvc_remote`            | the project's default DVC remote                 | run time  |
| `min_test_uar`          | `evaluate.min_test_uar` in the project's params  | run time  |
| `mlflow_tracking_uri`   | env `MLFLOW_TRACKING_URI`, else `mlflow.db` there | run time  |
| `schedule`              | `@daily`                                         | parse time |
| `retries`               | `2` (the quality gate never retries)             | parse time |
| `retry_delay_seconds`   | `300`                                            | parse time |
| `repro_timeout_minutes` | `240` (pull and push: 60, gate: 5)               | parse time |
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from airflow.sdk import DAG, Variable, chain, task
from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

DAG_ID = "ser_pipeline"
DEFAULT_PROJECT_DIR = Path(__file__).resolve().parents[1]
METRICS = Path("reports/metrics.json")
PARAMS = Path("params.yaml")


def setting(name: str, default: str | None = None, env: str | None = None) -> str | None:
    """Airflow Variable ``ser_<name>``, else environment variable ``env`` (``SER_<NAME>``), else ``default``.

    Without a metadata database (e.g. ``DagBag`` in tests) only ``AIRFLOW_VAR_*``
    environment variables are seen as Variables, so parsing never fails.
    """
    value = Variable.get(f"ser_{name}", default=None)
    if not value:
        value = os.environ.get(env or f"SER_{name.upper()}")
    return value or default


def project_dir() -> Path:
    """The DVC workspace every task works in."""
    return Path(setting("project_dir") or DEFAULT_PROJECT_DIR)


def dvc_command(*args: str) -> str:
    """A bash command running ``dvc *args`` in the project directory, with the configured MLflow store."""
    exports = ""
    if uri := setting("mlflow_tracking_uri", env="MLFLOW_TRACKING_URI"):
        exports = f"export MLFLOW_TRACKING_URI={shlex.quote(uri)} && "
    return f"cd {shlex.quote(str(project_dir()))} && {exports}{shlex.join(['dvc', *args])}"


def remote_args() -> list[str]:
    """``--remote NAME`` when a remote is configured, else nothing (the project's default remote)."""
    remote = setting("dvc_remote")
    return ["--remote", remote] if remote else []


def min_test_uar(project: Path) -> float:
    """The gate's threshold: the ``min_test_uar`` setting, else ``evaluate.min_test_uar`` in params.yaml."""
    if value := setting("min_test_uar"):
        return float(value)
    params = yaml.safe_load((project / PARAMS).read_text())
    try:
        return float(params["evaluate"]["min_test_uar"])
    except (KeyError, TypeError) as error:
        raise AirflowFailException(
            f"no threshold: set ser_min_test_uar or evaluate.min_test_uar in {project / PARAMS}"
        ) from error


def check_test_uar(project: Path, threshold: float) -> float:
    """The test UAR of ``reports/metrics.json``; raises when it is below ``threshold``."""
    uar = float(json.loads((project / METRICS).read_text())["test"]["uar"])
    if uar < threshold:
        raise AirflowFailException(
            f"quality gate: test UAR {uar:.4f} is below the threshold {threshold:.4f} "
            f"({project / METRICS}); the outputs are not pushed"
        )
    log.info("quality gate: test UAR %.4f >= threshold %.4f", uar, threshold)
    return uar


RETRIES = int(setting("retries", "2"))
RETRY_DELAY = timedelta(seconds=float(setting("retry_delay_seconds", "300")))
TRANSFER_TIMEOUT = timedelta(minutes=60)


@task.bash(execution_timeout=TRANSFER_TIMEOUT)
def dvc_pull() -> str:
    """Bring `data/raw` and the outputs of the last pushed run from the DVC remote.

    `--allow-missing`: outputs that were never pushed are rebuilt by `dvc repro`
    instead of failing the run; missing raw data still fails the repro.
    """
    return dvc_command("pull", "--allow-missing", *remote_args())


@task.bash(execution_timeout=timedelta(minutes=float(setting("repro_timeout_minutes", "240"))))
def dvc_repro() -> str:
    """Run the stages of `dvc.yaml` whose code, data or params changed (each logs to MLflow)."""
    return dvc_command("repro")


@task(retries=0, execution_timeout=timedelta(minutes=5))
def quality_gate() -> float:
    """Fail the run, so nothing is pushed, when the test UAR is below the threshold."""
    project = project_dir()
    return check_test_uar(project, min_test_uar(project))


@task.bash(execution_timeout=TRANSFER_TIMEOUT)
def dvc_push() -> str:
    """Upload the new outputs (features, model) to the DVC remote."""
    return dvc_command("push", *remote_args())


with DAG(
    dag_id=DAG_ID,
    schedule=setting("schedule", "@daily"),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": RETRIES, "retry_delay": RETRY_DELAY},
    doc_md=__doc__,
    tags=["ser", "dvc"],
):
    chain(dvc_pull(), dvc_repro(), quality_gate(), dvc_push())
