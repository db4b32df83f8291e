"""Team scale on a real PostgreSQL server on 127.0.0.1: the MLflow tracking server of
``make mlflow-server`` and one Optuna study filled by workers in separate workspaces."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import optuna
import psycopg
import pytest
import yaml
from conftest import PROJECT_ROOT, free_port, project_env, run
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from psycopg import sql
from test_remote import BUCKET, Emulator
from test_tune import runs_in, tiny_params, write_tiny_features

from ser import paths
from ser.config import parse_params
from ser.stages import tune

DATABASE_USER = "ser"
SERVER_OWNER = "postgres"  # PostgreSQL refuses to run as root: root runs it as this user
ARTIFACTS = f"gs://{BUCKET}/mlflow"


def postgres_program(name: str) -> str:
    """One of PostgreSQL's server programs: on PATH, else in Debian's /usr/lib/postgresql/<major>/bin."""
    debian = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    found = shutil.which(name) or max(debian, default=None, key=lambda p: int(Path(p).parts[4]))
    if found is None:
        raise AssertionError(
            f"PostgreSQL's {name} is neither on PATH nor in /usr/lib/postgresql/*/bin: "
            "install the server (`apt-get install postgresql`, as .ci/run does)"
        )
    return found


def as_server_owner() -> list[str]:
    """The command prefix that runs a PostgreSQL program as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_OWNER)
    except KeyError:
        raise AssertionError(
            f"running as root, and there is no {SERVER_OWNER!r} user to run PostgreSQL as: "
            "install Debian's postgresql package (.ci/run does), which creates it"
        ) from None
    return ["runuser", "-u", SERVER_OWNER, "--"]


@dataclass(frozen=True)
class Postgres:
    """A running server that trusts user ``ser`` on 127.0.0.1:``port``."""

    port: int

    def url(self, database: str) -> str:
        return f"postgresql://{DATABASE_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster listening on a free port of 127.0.0.1 only."""
    prefix = as_server_owner()
    # pytest's temporary folders are private to root; the server's user must reach its own
    folder = Path(tempfile.mkdtemp(prefix="ser-postgres-"))
    try:
        if prefix:
            shutil.chown(folder, SERVER_OWNER)
        data, log = folder / "data", folder / "server.log"
        run(
            [
                *prefix,
                postgres_program("initdb"),
                "-D",
                str(data),
                "-U",
                DATABASE_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            folder,
        )
        pg_ctl = [*prefix, postgres_program("pg_ctl"), "-D", str(data)]
        port = free_port()
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
        started = run(
            [*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", "60", "start"], folder, check=False
        )
        if started.returncode != 0:
            raise AssertionError(f"PostgreSQL did not start:\n{started.stdout}\n{log.read_text()}")
        try:
            yield Postgres(port)
        finally:
            run([*pg_ctl, "-m", "immediate", "-w", "stop"], folder)
    finally:
        shutil.rmtree(folder)


@dataclass(frozen=True)
class TrackingServer:
    url: str
    database: str
    gcs: Emulator


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return
        except OSError:  # not listening yet, or not healthy (HTTPError)
            if process.poll() is not None:
                raise AssertionError(f"the tracking server exited:\n{log.read_text()}") from None
            time.sleep(0.3)
    raise AssertionError(f"the tracking server did not answer in {seconds:g} s:\n{log.read_text()}")


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (make, mlflow, its web server); SIGKILL what is left after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def tracking_server(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrackingServer]:
    """``make mlflow-server`` on the PostgreSQL server, artifacts in a bucket of a GCS emulator."""
    gcs = Emulator(tmp_path_factory.mktemp("gcs"))
    gcs.start()
    database = postgres.create_database("mlflow")
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    command = [
        "make",
        "--no-print-directory",
        "-o",
        "install",
        "mlflow-server",
        f"MLFLOW_BACKEND_STORE_URI={database}",
        f"MLFLOW_ARTIFACTS_DESTINATION={ARTIFACTS}",
        f"MLFLOW_PORT={url.rsplit(':', 1)[1]}",
        "MLFLOW_SERVER_ARGS=--workers 1",
    ]
    # only the server talks to the bucket: clients send artifacts through it
    env = project_env(PROJECT_ROOT) | {"STORAGE_EMULATOR_HOST": gcs.url}
    with log.open("w") as sink:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_healthy(url, process, log, seconds=120)
        yield TrackingServer(url, database, gcs)
    finally:
        stop_group(process)
        gcs.stop()


def bucket_names(emulator: Emulator, prefix: str) -> set[str]:
    client = storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator.url},
    )
    return {blob.name for blob in client.list_blobs(BUCKET, prefix=prefix)}


def test_a_tune_stage_logs_to_the_tracking_server_through_the_environment(
    tracking_server: TrackingServer, mlflow_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_features(mlflow_workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    raw = tiny_params(n_trials=1) | {"mlflow": {"experiment": "team-tracking"}}
    chosen = tune.run(parse_params(raw))

    client = mlflow.MlflowClient(tracking_server.url)
    experiment = client.get_experiment_by_name("team-tracking")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("ser.stage") == "tune")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert [r.info.run_name for r in trials] == ["trial-0"]
    assert parent.data.params["model.kind"] == "seed_cnn"
    assert parent.data.params["tune.n_trials"] == "1"
    assert parent.data.params["chosen.kernel_size"] == str(chosen["seed_cnn"]["kernel_size"])
    assert 0 <= parent.data.metrics["best_val_uar"] <= 1

    # the artifact went through the server (clients need no bucket access) into the bucket
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    downloaded = client.download_artifacts(
        parent.info.run_id, "hyperparams.json", str(mlflow_workspace / "back")
    )
    assert json.loads(Path(downloaded).read_text()) == chosen
    run_folder = f"mlflow/{experiment.experiment_id}/{parent.info.run_id}/artifacts/"
    assert {f"{run_folder}hyperparams.json", f"{run_folder}tune/trials.csv"} <= bucket_names(
        tracking_server.gcs, run_folder
    )

    # and the runs are rows of the PostgreSQL database
    with psycopg.connect(tracking_server.database) as connection:
        stored = connection.execute(
            "SELECT name FROM runs WHERE experiment_id = %s", (int(experiment.experiment_id),)
        ).fetchall()
    assert sorted(name for (name,) in stored) == ["trial-0", "tune"]
    assert runs_in(mlflow_workspace) == []  # nothing went to the embedded store
    assert not (mlflow_workspace / "mlartifacts").exists()


def test_workers_starting_together_on_an_empty_database_open_one_study(postgres: Postgres) -> None:
    """Optuna creates its tables on first use: workers that start at once race to (optuna#1092)."""
    storage_url = postgres.create_database("optuna-race")
    params = parse_params(tiny_params(storage=storage_url))
    workers = 4
    starting = threading.Barrier(workers)

    def open_one(worker: int) -> str:
        starting.wait(timeout=60)
        return tune.open_study(params, "ser-race", worker).study_name

    with ThreadPoolExecutor(workers) as pool:
        assert list(pool.map(open_one, range(workers))) == ["ser-race"] * workers
    assert [s.study_name for s in optuna.get_all_study_summaries(storage_url)] == ["ser-race"]


@contextlib.contextmanager
def trials_held(storage_url: str) -> Iterator[Callable[[], set[str]]]:
    """Optuna's tables, with ``trials`` locked until the block ends; yields a function that
    names (by ``application_name``) the sessions waiting for it.

    Workers start at different speeds: held at their first look at the trials, they
    begin their trials together, so that each one gets some to run.
    """
    tune.open_storage(storage_url)
    with (
        psycopg.connect(storage_url) as holder,
        psycopg.connect(storage_url, autocommit=True) as observer,
    ):
        holder.execute("LOCK TABLE trials IN ACCESS EXCLUSIVE MODE")

        def waiting() -> set[str]:
            rows = observer.execute(
                "SELECT application_name FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return {name for (name,) in rows}

        yield waiting
        holder.commit()


N_TRIALS = 4


@pytest.mark.slow
def test_two_workers_in_separate_workspaces_fill_one_postgresql_study(
    postgres: Postgres, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    storage_url = postgres.create_database("optuna")
    raw = tiny_params(n_trials=N_TRIALS, storage=storage_url) | {
        "mlflow": {"experiment": "team-tuning"}
    }
    here, elsewhere = tmp_path / "machine-a", tmp_path / "machine-b"
    write_tiny_features(here)
    (elsewhere / paths.FEATURES).parent.mkdir(parents=True)
    shutil.copy(here / paths.FEATURES, elsewhere / paths.FEATURES)  # as `dvc pull` brings them
    for machine in (here, elsewhere):
        (machine / "params.yaml").write_text(yaml.safe_dump(raw))
    env = project_env(PROJECT_ROOT) | {"MLFLOW_TRACKING_URI": tracking_server.url}
    tune_command = ["ser", "--params", "params.yaml", "tune"]
    with ThreadPoolExecutor(2) as pool, trials_held(storage_url) as waiting:
        # the stage, as `dvc repro` runs it, and a worker elsewhere; libpq names their sessions
        started = [
            pool.submit(run, tune_command, here, env | {"PGAPPNAME": "stage"}),
            pool.submit(
                run, [*tune_command, "--worker", "1"], elsewhere, env | {"PGAPPNAME": "worker"}
            ),
        ]
        deadline = time.monotonic() + 300
        while (held := waiting()) != {"stage", "worker"}:
            ended = [f for f in started if f.done()]
            assert not ended, f"a tune process ended before any trial: {ended[0].exception()}"
            assert time.monotonic() < deadline, f"only {held or 'none'} reached the study in 300 s"
            time.sleep(0.2)
    for finished in started:
        finished.result()

    (summary,) = optuna.get_all_study_summaries(storage_url)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage_url).get_trials()
    assert {t.state for t in trials} <= set(tune.FINISHED), "a trial was left running"
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials))), "a trial was lost"
    # one budget; Optuna checks it after each trial, so a worker racing another past the
    # check may start one trial more (at most one per extra worker)
    assert N_TRIALS <= len(trials) <= N_TRIALS + 1
    sampled = {json.dumps(t.params, sort_keys=True) for t in trials}
    assert len(sampled) == len(trials), "two trials ran the same parameters"
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both workers ran trials"

    client = mlflow.MlflowClient(tracking_server.url)
    experiment = client.get_experiment_by_name("team-tuning")
    logged = sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id]))
    assert logged == sorted([*(f"trial-{n}" for n in numbers), "tune", "tune-worker"]), (
        "each trial is one MLflow run, nested in the stage's run or the worker's"
    )
    assert json.loads((here / paths.HYPERPARAMS).read_text())["kind"] == "seed_cnn"
    assert not (elsewhere / paths.HYPERPARAMS).exists()  # a worker writes no outputs


def test_the_inference_log_goes_to_postgresql_when_configured(postgres: Postgres) -> None:
    """``SER_INFERENCE_LOG=postgresql://…``: the same records as the Parquet log, in a table."""
    from test_inference_log import MODEL, SCHEMA, answers

    from ser.serve.inference_log import REFUSED, InferenceLog, sink_for

    url = postgres.create_database("inference")
    log = InferenceLog(sink_for(url), MODEL, "serve")
    log.record(answers())
    log.close()
    assert (log.written, log.lost) == (3, 0)
    now = datetime.now(UTC)
    read = sink_for(url).read(now - timedelta(hours=1), now + timedelta(seconds=1))
    assert list(read.columns) == SCHEMA.names
    assert read["label"].tolist() == ["angry", "no_speech", REFUSED]
    assert read["p_angry"].iloc[0] == pytest.approx(0.6)
    assert sink_for(url).read(now - timedelta(days=2), now - timedelta(days=1)).empty
