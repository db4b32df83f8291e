"""The Airflow DAG: its shape without a database, and real `airflow dags test` runs.

The end-to-end runs use a SQLite metadata database in a temporary ``AIRFLOW_HOME``,
real Bash tasks, a throw-away copy of the project and a local-folder DVC remote.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, project_env, run

DAGS = PROJECT_ROOT / "dags"
DAG_ID = "ser_pipeline"
TASK_IDS = ["dvc_pull", "dvc_repro", "quality_gate", "dvc_push"]
CACHED_OUTS = [
    "data/processed/manifest.parquet",
    "data/processed/features.parquet",
    "data/processed/frames.npz",
    "models",
    "tuning/study",
    "tuning/hyperparams.json",
    "reports/metrics.json",
]


def _without_ser_settings(env: dict[str, str]) -> dict[str, str]:
    """``env`` without SER_* or AIRFLOW_VAR_SER_* settings a developer's shell may carry."""
    return {k: v for k, v in env.items() if not k.startswith(("SER_", "AIRFLOW_VAR_SER_"))}


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch, tmp_path_factory):
    for key in os.environ.keys() - _without_ser_settings(dict(os.environ)).keys():
        monkeypatch.delenv(key)
    # DagBag below imports Airflow in this process: keep its home out of ~/airflow
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path_factory.getbasetemp() / "airflow-parse"))


def parse_dag(dag_folder: Path = DAGS):
    """The DAG as the scheduler's parser sees it, without a metadata database."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dag_folder))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def load_dag_module():
    spec = importlib.util.spec_from_file_location(
        "ser_pipeline_under_test", DAGS / "ser_pipeline.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dag_shape():
    dag = parse_dag()
    assert [task.task_id for task in dag.topological_sort()] == TASK_IDS
    for upstream, downstream in pairwise(TASK_IDS):
        assert dag.task_dict[upstream].downstream_task_ids == {downstream}
    assert dag.task_dict["dvc_push"].downstream_task_ids == set()
    assert dag.schedule == "@daily"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    for task_id in ("dvc_pull", "dvc_repro", "dvc_push"):
        assert dag.task_dict[task_id].retries == 2
        assert dag.task_dict[task_id].retry_delay == timedelta(minutes=5)
    assert dag.task_dict["quality_gate"].retries == 0
    assert dag.task_dict["dvc_repro"].execution_timeout == timedelta(hours=4)
    for task in dag.tasks:
        assert task.execution_timeout is not None, task.task_id
        assert task.doc_md, task.task_id


def test_variables_override_environment_override_defaults(monkeypatch):
    monkeypatch.setenv("SER_SCHEDULE", "@hourly")
    monkeypatch.setenv("SER_RETRIES", "1")
    monkeypatch.setenv("SER_RETRY_DELAY_SECONDS", "7")
    dag = parse_dag()
    assert dag.schedule == "@hourly"
    assert dag.task_dict["dvc_repro"].retries == 1
    assert dag.task_dict["dvc_repro"].retry_delay == timedelta(seconds=7)
    monkeypatch.setenv("AIRFLOW_VAR_SER_SCHEDULE", "@weekly")  # an Airflow Variable
    assert parse_dag().schedule == "@weekly"


def test_dag_file_does_not_import_the_ml_stack():
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]);"
        "print(sorted({'tensorflow', 'mlflow', 'dvc', 'librosa', 'ser'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(DAGS / "ser_pipeline.py")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ""},
        timeout=120,
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_gate_threshold_and_commands(monkeypatch, tmp_path):
    dags = load_dag_module()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"min_test_uar": 0.3}}))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/metrics.json").write_text(json.dumps({"test": {"uar": 0.25}}))
    assert dags.min_test_uar(tmp_path) == 0.3
    with pytest.raises(dags.AirflowFailException, match=r"test UAR 0\.2500 .* threshold 0\.3000"):
        dags.check_test_uar(tmp_path, 0.3)
    assert dags.check_test_uar(tmp_path, 0.25) == 0.25
    monkeypatch.setenv("SER_MIN_TEST_UAR", "0.2")
    assert dags.min_test_uar(tmp_path) == 0.2

    monkeypatch.setenv("SER_PROJECT_DIR", "/srv/my project")
    assert dags.dvc_command("repro") == "cd '/srv/my project' && dvc repro"
    assert dags.remote_args() == []
    monkeypatch.setenv("SER_DVC_REMOTE", "gcs")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert dags.dvc_command("push", *dags.remote_args()) == (
        "cd '/srv/my project' && export MLFLOW_TRACKING_URI=http://127.0.0.1:5000"
        " && dvc push --remote gcs"
    )


# --- real runs -------------------------------------------------------------------------


def airflow_env(project: Path, home: Path, dag_folder: Path, **settings: str) -> dict[str, str]:
    """Environment for the ``airflow`` CLI: its own home and SQLite DB, this DAG folder only."""
    env = _without_ser_settings(project_env(project))
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dag_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **settings,
    }
    run(["airflow", "db", "migrate"], project, env)
    return env


def dags_test(project: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    """``airflow dags test``: its exit code and output (also kept in ``$AIRFLOW_HOME/dags-test.log``)."""
    result = run(["airflow", "dags", "test", DAG_ID, *args], project, env, check=False)
    output = result.stdout + result.stderr
    (Path(env["AIRFLOW_HOME"]) / "dags-test.log").write_text(output)
    return result.returncode, output


def task_states(env: dict[str, str]) -> dict[str, tuple[str, int]]:
    """``task_id -> (state, try_number)`` of the (only) run in the metadata database."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        rows = db.execute("SELECT task_id, state, try_number FROM task_instance").fetchall()
    return {task_id: (state, tries) for task_id, state, tries in rows}


def remote_has(remote: Path, md5: str) -> bool:
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


@pytest.mark.slow
def test_dags_test_pulls_reproduces_gates_and_pushes(project_repo, tmp_path):
    repo = project_repo({"evaluate": {"min_test_uar": 0.0}})
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "backup", str(remote)], repo)  # not the default: -r must be passed
    tracking = tmp_path / "tracking.db"
    env = airflow_env(
        repo, tmp_path / "airflow", repo / "dags", SER_DVC_REMOTE="backup", SER_RETRIES="0"
    )
    run(
        ["airflow", "variables", "set", "ser_mlflow_tracking_uri", f"sqlite:///{tracking}"],
        repo,
        env,
    )

    returncode, output = dags_test(repo, env)

    assert returncode == 0, f"see {env['AIRFLOW_HOME']}/dags-test.log"
    assert task_states(env) == {task_id: ("success", 1) for task_id in TASK_IDS}
    assert "quality gate: test UAR" in output
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {
        out["path"]: out.get("md5")
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])  # check_params writes nothing
    }
    assert 0 <= json.loads((repo / "reports/metrics.json").read_text())["test"]["uar"] <= 1
    for path in CACHED_OUTS:
        assert remote_has(remote, outs[path]), path
    raw = yaml.safe_load((repo / "data/raw.dvc").read_text())["outs"][0]["md5"]
    assert remote_has(remote, raw)
    assert tracking.is_file() and not (repo / "mlflow.db").exists()


@pytest.mark.slow
def test_failing_repro_is_retried_and_nothing_is_pushed(project_repo, tmp_path):
    repo = project_repo()
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "local", str(remote)], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = "many"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = airflow_env(
        repo, tmp_path / "airflow", repo / "dags", SER_RETRIES="1", SER_RETRY_DELAY_SECONDS="1"
    )

    returncode, output = dags_test(repo, env)

    assert returncode == 1
    assert task_states(env) == {
        "dvc_pull": ("success", 1),
        "dvc_repro": ("failed", 2),
        "quality_gate": ("upstream_failed", 0),
        "dvc_push": ("upstream_failed", 0),
    }
    assert "train.epochs" in output
    assert not (remote / "files").exists()


@pytest.mark.slow
def test_failing_quality_gate_stops_the_push(tmp_path):
    """Pull and repro are marked successful; the gate judges a written metrics file."""
    project = tmp_path / "project"
    (project / "reports").mkdir(parents=True)
    shutil.copy2(PROJECT_ROOT / "params.yaml", project)  # evaluate.min_test_uar: 0.30
    (project / "reports/metrics.json").write_text(json.dumps({"test": {"uar": 0.4}}))
    env = airflow_env(
        project, tmp_path / "airflow", DAGS, SER_PROJECT_DIR=str(project), SER_MIN_TEST_UAR="0.35"
    )
    run(["airflow", "variables", "set", "ser_min_test_uar", "0.5"], project, env)  # wins

    returncode, output = dags_test(project, env, "--mark-success-pattern", "dvc_pull|dvc_repro")

    assert returncode == 1
    assert task_states(env) == {
        "dvc_pull": ("success", 1),
        "dvc_repro": ("success", 1),
        "quality_gate": ("failed", 1),
        "dvc_push": ("upstream_failed", 0),
    }
    assert "test UAR 0.4000 is below the threshold 0.5000" in output
