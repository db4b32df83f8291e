"""MLflow runs for every stage, tagged with the git commit, DVC experiment and data version.

Runs about a model also carry the content hashes of the model and of the features it is
scored on (:func:`model_tags`), so that the runs of a model are found by what it is, never
by a record of which run made it: DVC may skip a stage or restore it from its run cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import yaml

from ser import paths
from ser.config import Params, flatten
from ser.paths import workspace_root

log = logging.getLogger(__name__)

RAW_DATA_DVC = Path("data/raw.dvc")
MODELS_TAG = "ser.models_sha256"
"""The content hash of the ``models/`` folder a run trained, scored or registered."""
FEATURES_TAG = "ser.features_sha256"
"""The content hash of the feature files (vectors and frames) the model was scored on."""


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


def content_sha256(*files_or_folders: Path) -> str:
    """One SHA-256 of the names and bytes of the files given, or under the folders given
    (named by their path inside the folder); missing paths are left out. Equal content,
    equal hash, wherever it lives or however DVC linked it there."""
    digest = hashlib.sha256()
    for path in files_or_folders:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in filter(Path.is_file, files):
            name = file.relative_to(path) if path.is_dir() else Path(file.name)
            with file.open("rb") as handle:
                content = hashlib.file_digest(handle, "sha256").hexdigest()
            digest.update(f"{name.as_posix()}\0{content}\n".encode())
    return digest.hexdigest()


def model_tags() -> dict[str, str]:
    """:data:`MODELS_TAG` and :data:`FEATURES_TAG` of the workspace's model and features."""
    return {
        MODELS_TAG: content_sha256(paths.MODELS_DIR),
        FEATURES_TAG: content_sha256(paths.FEATURES, paths.FRAMES_FILE),
    }


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
    """Point MLflow at the tracking store (moved with its folder: :func:`relocate`)."""
    uri = tracking_uri()
    embedded = not os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if embedded:
        # set_tracking_uri exports the variable; the default must follow the working directory
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    relocate(uri)


def artifact_root(uri: str) -> str | None:
    """Where a new experiment of the store ``uri`` keeps its artifacts: beside a SQLite file
    (MLflow's default, ``./mlruns``, would follow the working directory, e.g. a scheduled
    run's clone that is then removed); a server decides for itself (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


ARTIFACT_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "logged_models": ("artifact_location",),
    "model_versions": ("source", "storage_location"),
}
"""The columns of MLflow's SQL schema that hold artifact locations."""


def relocate(uri: str) -> None:
    """Point a SQLite store's artifact locations at the folder beside it again, after the
    store and its ``mlartifacts/`` were moved or copied together (a checkout moved, copied,
    or cloned with them).

    MLflow records absolute ``file://`` locations and has no API to change an experiment's;
    this rewrites the locations of the experiments :func:`artifact_root` placed, that is
    ``file://<folder>/mlartifacts`` of some other folder, in :data:`ARTIFACT_COLUMNS`.
    """
    here = artifact_root(uri)
    database = Path(uri.removeprefix("sqlite:///"))
    if here is None or not database.is_file():
        return
    with contextlib.closing(sqlite3.connect(database, timeout=60)) as store, store:
        tables = {name for (name,) in store.execute("SELECT name FROM sqlite_master")}
        if "experiments" not in tables:
            return  # not initialised yet
        moved = {
            location
            for (location,) in store.execute("SELECT artifact_location FROM experiments")
            if location.startswith("file://") and location.endswith("/mlartifacts")
        } - {here}
        for old in moved:
            for table, column in (
                (table, column)
                for table, columns in ARTIFACT_COLUMNS.items()
                if table in tables
                for column in columns
            ):
                store.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?)"
                    f" WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (here, len(old) + 1, old, len(old) + 1, f"{old}/"),
                )
            log.info(
                "MLflow store %s moved: artifacts of %s are now read from %s", database, old, here
            )


def use_experiment(name: str) -> None:
    """Point MLflow at the store and experiment, creating it with :func:`artifact_root`.

    Another process may create it between the lookup and the creation (two tune workers
    starting on a fresh server): that is fine. ``mlflow.set_experiment`` is not left to
    create it, because when it loses that race it leaves the Default experiment active
    (MLflow 3.17), and the runs would land there.
    """
    connect()
    if mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=artifact_root(tracking_uri()))
        except mlflow.exceptions.MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
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


def runs_tagged(tags: dict[str, str], experiment: str) -> list[mlflow.entities.Run]:
    """The runs of ``experiment`` that carry every one of ``tags``, newest first."""
    connect()
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=query,
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )


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
