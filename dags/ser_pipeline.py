"""Scheduled runs of the SER pipeline, each recorded as a DVC experiment in git and the DVC remote.

Every DAG run works in its own clean clone of a git remote and ref, never in a working copy:

    checkout ──> dvc_exp_run ──> quality_gate ──> dvc_exp_push ──> remove_checkout

- `checkout` (a setup task) clones `git_ref` of `git_remote` into `work_dir/<experiment>`,
  gives it the `dvc_config` file as `.dvc/config.local` and the DVC cache that all runs
  share (`work_dir/dvc-cache`), then `dvc pull --allow-missing`.
- `dvc_exp_run` reproduces the pipeline as the DVC experiment `<experiment>`, named after
  the DAG run (e.g. `scheduled-20250102-000000`); its MLflow runs carry the same name.
- `quality_gate` fails the run when the test UAR of `reports/metrics.json` is below the
  threshold; nothing is pushed after a failed repro or gate. When the run trained a
  model, `ser promote` first moves the registered model's alias `champion` to it only
  if it passes (the same threshold).
- `dvc_exp_push` pushes the experiment's git ref to `git_remote` and its outputs to the DVC
  remote, so `dvc exp pull` / `dvc exp show` in any clone list it with its metrics.
- `remove_checkout` (a teardown task) deletes the clone, whether the run passed or not.

`max_active_runs=1`: runs no longer share a workspace, but one run trains on all of the
worker's cores and the default MLflow store is a single SQLite file.

Every setting is looked up as the Airflow Variable `ser_<name>`, else the environment
variable `SER_<NAME>`, else a default (docs/airflow.md has the table):

| name                    | default                                                | read at    |
|-------------------------|--------------------------------------------------------|------------|
| `git_remote`            | the repository holding this `dags/` folder             | run time   |
| `git_ref`               | `main` (a branch or tag)                               | run time   |
| `work_dir`              | `$AIRFLOW_HOME/ser-runs` (`~/airflow/ser-runs`)        | run time   |
| `dvc_config`            | `.dvc/config.local` of that repository, if it has one  | run time   |
| `dvc_remote`            | the project's default DVC remote                       | run time   |
| `min_test_uar`          | `quality_gate.min_test_uar` in the checkout's params   | run time   |
| `mlflow_tracking_uri`   | env `MLFLOW_TRACKING_URI`, else `mlflow.db` in that repository | run time |
| `schedule`              | `@daily`                                               | parse time |
| `retries`               | `2` (the quality gate never retries)                   | parse time |
| `retry_delay_seconds`   | `300`                                                  | parse time |
| `repro_timeout_minutes` | `240` (checkout and push: 60, gate: 5)                 | parse time |
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, chain, get_current_context, setup, task, teardown
from airflow.sdk.exceptions import AirflowFailException

from ser import paths
from ser.config import DEFAULT_PARAMS, load_params
from ser.errors import SerError
from ser.ops.airflow_settings import setting
from ser.serve import gate

log = logging.getLogger(__name__)

DAG_ID = "ser_pipeline"
HOME_REPOSITORY = Path(__file__).resolve().parents[1]
COMMITTER = ("Airflow ser_pipeline", "ser_pipeline@airflow.invalid")
"""Who commits the experiments, should the worker have no git identity."""


def work_dir() -> Path:
    """Where the runs' checkouts and their shared DVC cache live."""
    home = os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow"
    return Path(setting("work_dir") or Path(home) / "ser-runs")


def experiment_name(run_type: str, when: datetime) -> str:
    """The DVC experiment of a DAG run, e.g. ``scheduled-20250102-030000``: a valid git ref name."""
    stamp = when.astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    if when.microsecond:  # manual runs triggered within one second stay apart
        stamp += f"-{when.microsecond:06d}"
    return f"{run_type}-{stamp}"


def this_run() -> tuple[str, Path]:
    """The experiment name of the running DAG run and the folder of its checkout."""
    dag_run = get_current_context()["dag_run"]
    name = experiment_name(dag_run.run_type.value, dag_run.logical_date or dag_run.run_after)
    return name, work_dir() / name


def in_directory(directory: Path, *commands: list[str]) -> str:
    """A bash command running ``commands`` one after another in ``directory``, stopping at the first failure."""
    return " && ".join([f"cd {shlex.quote(str(directory))}", *map(shlex.join, commands)])


def remote_args() -> list[str]:
    """``--remote NAME`` when a DVC remote is configured, else nothing (the project's default remote)."""
    remote = setting("dvc_remote")
    return ["--remote", remote] if remote else []


def dvc_config() -> Path | None:
    """The file every checkout gets as ``.dvc/config.local`` (remote URLs, endpoints, credential paths)."""
    if configured := setting("dvc_config"):
        if not Path(configured).is_file():
            raise AirflowFailException(f"ser_dvc_config: no such file {configured}")
        return Path(configured)
    default = HOME_REPOSITORY / ".dvc/config.local"
    return default if default.is_file() else None


def checkout_command(checkout: Path) -> str:
    """Clone the configured ref into ``checkout`` (replacing a partial one), configure DVC, pull."""
    remote = setting("git_remote") or str(HOME_REPOSITORY)
    ref = setting("git_ref") or "main"
    clone = ["git", "clone", "--quiet", "--branch", ref, "--", remote, str(checkout)]
    commands = [
        ["git", "config", "user.name", COMMITTER[0]],
        ["git", "config", "user.email", COMMITTER[1]],
        ["dvc", "cache", "dir", "--local", str(checkout.parent / "dvc-cache")],
        ["dvc", "pull", "--allow-missing", *remote_args()],
    ]
    if config := dvc_config():
        commands.insert(0, ["cp", str(config), ".dvc/config.local"])
    prepare = f"rm -rf {shlex.quote(str(checkout))} && {shlex.join(clone)}"
    return f"{prepare} && {in_directory(checkout, *commands)}"


def mlflow_tracking_uri() -> str:
    """The MLflow store of every scheduled run: never one inside the clone, which is removed."""
    default_store = f"sqlite:///{HOME_REPOSITORY / 'mlflow.db'}"
    return setting("mlflow_tracking_uri", default_store, env="MLFLOW_TRACKING_URI")


def checkout_environment(checkout: Path) -> dict[str, str]:
    """What a command in ``checkout`` runs with: the configured MLflow store, and the
    checkout's own ``ser`` code ahead of whichever copy the worker has installed."""
    python_path = os.pathsep.join(
        filter(None, [str(checkout / "src"), os.environ.get("PYTHONPATH")])
    )
    return {"MLFLOW_TRACKING_URI": mlflow_tracking_uri(), "PYTHONPATH": python_path}


def exp_run_command(checkout: Path, name: str) -> str:
    """``dvc exp run --name name`` in ``checkout``, with :func:`checkout_environment`."""
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in checkout_environment(checkout).items())
    return f"export {exports} && " + in_directory(checkout, ["dvc", "exp", "run", "--name", name])


def exp_push_command(checkout: Path, name: str) -> str:
    """Push experiment ``name`` to the clone's origin and its outputs to the DVC remote.

    ``--force``: a DAG run that is cleared and run again replaces its own experiment.
    """
    return in_directory(checkout, ["dvc", "exp", "push", "--force", *remote_args(), "origin", name])


def min_test_uar(project: Path) -> float:
    """The gate's threshold: the ``min_test_uar`` setting, else the checkout's params
    (``quality_gate.min_test_uar``)."""
    override = setting("min_test_uar")
    try:
        params = load_params(project / DEFAULT_PARAMS)
    except SerError as error:
        raise AirflowFailException(f"quality gate: {error}") from error
    return gate.threshold(params, float(override) if override else None)


def check_test_uar(project: Path, threshold: float) -> float:
    """The headline test UAR of ``reports/metrics.json``; fails the task when it is below
    ``threshold`` (the quality gate of ``ser promote``, ``ser.serve.gate``)."""
    source = str(project / paths.METRICS)
    try:
        scope, uar = gate.judge(gate.read_metrics(project / paths.METRICS), source, threshold)
    except (gate.GateFailed, gate.NoTestMetrics) as error:
        raise AirflowFailException(f"{error}; the experiment is not pushed") from error
    log.info("quality gate: %s UAR %.4f >= threshold %.4f", scope, uar, threshold)
    return uar


RETRIES = int(setting("retries", "2"))
RETRY_DELAY = timedelta(seconds=float(setting("retry_delay_seconds", "300")))
TRANSFER_TIMEOUT = timedelta(minutes=60)


@setup
@task.bash(execution_timeout=TRANSFER_TIMEOUT)
def checkout() -> str:
    """Clone `git_ref` of `git_remote` for this run, configure DVC and pull its data.

    `--allow-missing`: outputs that were never pushed are rebuilt by `dvc exp run`
    instead of failing the run; missing raw data still fails the repro.
    """
    return checkout_command(this_run()[1])


@task.bash(execution_timeout=timedelta(minutes=float(setting("repro_timeout_minutes", "240"))))
def dvc_exp_run() -> str:
    """Run the stages of `dvc.yaml` that are not up to date as this run's DVC experiment."""
    name, checkout = this_run()
    return exp_run_command(checkout, name)


def promote(checkout: Path, threshold: float) -> None:
    """``ser promote`` in ``checkout``: alias ``champion`` moves to the model version this
    run registered only when its test UAR reaches ``threshold``; fail with its message."""
    command = ["ser", "promote", "--min-uar", str(threshold)]
    env = {**os.environ, **checkout_environment(checkout)}
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    for line in done.stderr.splitlines():
        log.info("%s", line)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise AirflowFailException(f"{shlex.join(command)} in {checkout}: {last[0]}")


@task(retries=0, execution_timeout=timedelta(minutes=5))
def quality_gate() -> float:
    """Fail the run, so nothing is pushed, when the test UAR is below the threshold.

    When this run trained a model (pulled outputs train nothing), ``ser promote`` applies
    the same threshold in the MLflow Model Registry first: alias ``champion`` moves to the
    new version only when it passes.
    """
    checkout = this_run()[1]
    threshold = min_test_uar(checkout)
    if (checkout / paths.TRAIN_RUN_ID).is_file():
        promote(checkout, threshold)
    return check_test_uar(checkout, threshold)


@task.bash(execution_timeout=TRANSFER_TIMEOUT)
def dvc_exp_push() -> str:
    """Push the experiment to the git remote and its outputs to the DVC remote."""
    name, checkout = this_run()
    return exp_push_command(checkout, name)


@teardown
@task(retries=0, execution_timeout=timedelta(minutes=10))
def remove_checkout() -> None:
    """Delete this run's clone, whether the run passed or failed (the DVC cache stays)."""
    checkout = this_run()[1]
    if checkout.exists():
        shutil.rmtree(checkout)
        log.info("removed %s", checkout)


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
    cloned = checkout()
    chain(
        cloned,
        dvc_exp_run(),
        quality_gate(),
        dvc_exp_push(),
        remove_checkout().as_teardown(setups=cloned),
    )
