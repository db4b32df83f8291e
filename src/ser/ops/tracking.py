"""MLflow runs for every stage, tagged with the git commit, DVC experiment and data version."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import yaml

from ser.config import Params, flatten
from ser.paths import workspace_root

log = logging.getLogger(__name__)

RAW_DATA_DVC = Path("data/raw.dvc")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store ``mlflow.db`` in the repository."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace_root() / 'mlflow.db'}"


def _git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return result.stdout.strip()


def data_version(dvc_file: Path = RAW_DATA_DVC) -> str:
    """The content hash DVC recorded for ``data/raw`` (``unknown`` when not tracked)."""
    try:
        outs = yaml.safe_load(dvc_file.read_text())["outs"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "unknown"
    return str(outs[0].get("md5", "unknown"))


def run_tags(stage: str) -> dict[str, str]:
    """Tags that tie a run to the code, the DVC experiment and the data it used."""
    return {
        "ser.stage": stage,
        "mlflow.source.git.commit": _git_commit(),
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "dvc.exp_baseline": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "data.version": data_version(),
    }


def connect() -> None:
    """Point MLflow at the tracking store."""
    embedded = not os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri())
    if embedded:
        # set_tracking_uri exports the variable; the default must follow the working directory
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def artifact_root(uri: str) -> str | None:
    """Where a new experiment of the store ``uri`` keeps its artifacts: beside a SQLite file
    (MLflow's default, ``./mlruns``, would follow the working directory, e.g. a scheduled
    run's clone that is then removed); a server decides for itself (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def use_experiment(name: str) -> None:
    """Point MLflow at the store and experiment, creating it with :func:`artifact_root`."""
    connect()
    root = artifact_root(tracking_uri())
    if root is not None and mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=root)
    mlflow.set_experiment(name)


def ui_address(base: str, experiment: str) -> str:
    """The address of ``experiment``'s runs table in the MLflow UI at ``base``.

    MLflow 3's UI opens every experiment on its GenAI overview unless the address asks
    for the model-training view (the experiment tag ``mlflow.experimentKind`` does not
    override it in 3.17).
    """
    connect()
    found = mlflow.get_experiment_by_name(experiment)
    page = f"experiments/{found.experiment_id}" if found else "experiments"
    return f"{base.rstrip('/')}/#/{page}?workflowType=machine_learning"


@contextmanager
def stage_run(stage: str, params: Params, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open (or reopen, given ``run_id``) the MLflow run of a stage with its tags.

    A new run logs all params flat; a reopened run only gains what the stage logs.
    """
    use_experiment(params.mlflow.experiment)
    if run_id is not None and _run_exists(run_id):
        with mlflow.start_run(run_id=run_id) as run:
            yield run
        return
    exp_name = os.environ.get("DVC_EXP_NAME")
    name = f"{exp_name}:{stage}" if exp_name else stage
    with mlflow.start_run(run_name=name, tags=run_tags(stage)) as run:
        mlflow.log_params(flatten(params))
        yield run


def _run_exists(run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        log.warning("MLflow run %s is not in %s; logging to a new run", run_id, tracking_uri())
        return False
    return True


if __name__ == "__main__":  # `make mlflow-ui`: where to point the browser
    from ser.config import DEFAULT_PARAMS, load_params

    experiment = load_params(DEFAULT_PARAMS).mlflow.experiment
    print(f"MLflow UI, runs of experiment {experiment!r}: {ui_address(sys.argv[1], experiment)}")
