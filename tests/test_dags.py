"""The Airflow DAG: its shape without a database, its gate and commands, and real `airflow dags test` runs.

The end-to-end runs use a SQLite metadata database in a temporary ``AIRFLOW_HOME``, real
tasks, a throw-away copy of the project pushed to a local bare git repository (the git
remote the runs clone and push experiments to) and a local-folder DVC remote.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, free_port, project_env, run

DAGS = PROJECT_ROOT / "dags"
DAG_ID = "ser_pipeline"
TASK_IDS = ["checkout", "dvc_exp_run", "quality_gate", "dvc_exp_push", "remove_checkout"]
CACHED_OUTS = [
    "data/processed/manifest.parquet",
    "data/processed/features.parquet",
    "data/processed/frames.npz",
    "models",
    "tuning/study",
    "tuning/hyperparams.json",
]
"""What the DVC remote carries; the reports travel with the experiment's git commit."""


def _without_ser_settings(env: dict[str, str]) -> dict[str, str]:
    """``env`` without SER_* or AIRFLOW_VAR_SER_* settings a developer's shell may carry."""
    return {k: v for k, v in env.items() if not k.startswith(("SER_", "AIRFLOW_VAR_SER_"))}


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch, tmp_path_factory):
    for key in os.environ.keys() - _without_ser_settings(dict(os.environ)).keys():
        monkeypatch.delenv(key)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
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
    for upstream, downstream in pairwise(TASK_IDS[1:]):
        assert dag.task_dict[upstream].downstream_task_ids == {downstream}
    checkout, remove = dag.task_dict["checkout"], dag.task_dict["remove_checkout"]
    assert checkout.downstream_task_ids == {"dvc_exp_run", "remove_checkout"}
    assert checkout.is_setup and remove.is_teardown
    assert remove.trigger_rule == "all_done_setup_success"  # runs after a failed repro or gate
    assert remove.downstream_task_ids == set()
    assert dag.schedule == "@daily"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    for task_id in ("checkout", "dvc_exp_run", "dvc_exp_push"):
        assert dag.task_dict[task_id].retries == 2
        assert dag.task_dict[task_id].retry_delay == timedelta(minutes=5)
    assert dag.task_dict["quality_gate"].retries == 0
    assert dag.task_dict["dvc_exp_run"].execution_timeout == timedelta(hours=4)
    for task in dag.tasks:
        assert task.execution_timeout is not None, task.task_id
        assert task.doc_md, task.task_id


def test_variables_override_environment_override_defaults(monkeypatch):
    monkeypatch.setenv("SER_SCHEDULE", "@hourly")
    monkeypatch.setenv("SER_RETRIES", "1")
    monkeypatch.setenv("SER_RETRY_DELAY_SECONDS", "7")
    dag = parse_dag()
    assert dag.schedule == "@hourly"
    assert dag.task_dict["dvc_exp_run"].retries == 1
    assert dag.task_dict["dvc_exp_run"].retry_delay == timedelta(seconds=7)
    monkeypatch.setenv("AIRFLOW_VAR_SER_SCHEDULE", "@weekly")  # an Airflow Variable
    assert parse_dag().schedule == "@weekly"


def test_dag_file_imports_the_gate_but_not_the_ml_stack():
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); heavy = {'tensorflow', 'keras', 'mlflow', "
        "'dvc', 'librosa', 'numpy', 'pandas', 'sklearn'}; print(sorted(heavy & set(sys.modules)), "
        "'ser.serve.gate' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(DAGS / "ser_pipeline.py")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")},
        timeout=120,
    )
    assert result.stdout.strip().splitlines()[-1] == "[] True"


def test_experiment_names_are_git_refs_named_after_the_run():
    dags = load_dag_module()
    scheduled = dags.experiment_name("scheduled", datetime(2025, 1, 2, 3, 0, tzinfo=UTC))
    assert scheduled == "scheduled-20250102-030000"
    east = timezone(timedelta(hours=2))
    manual = dags.experiment_name("manual", datetime(2025, 1, 2, 5, 0, 0, 1234, tzinfo=east))
    assert manual == "manual-20250102-030000-001234"
    for name in (scheduled, manual):
        ref = f"refs/exps/ab/cdef/{name}"  # where DVC keeps it
        assert run(["git", "check-ref-format", ref], PROJECT_ROOT, check=False).returncode == 0


def write_metrics(project: Path, metrics: object) -> None:
    (project / "reports").mkdir(exist_ok=True)
    (project / "reports/metrics.json").write_text(json.dumps(metrics))


@pytest.mark.parametrize("scope", ["test", "test_speaker_normalised"])
def test_gate_judges_whichever_headline_scope_evaluate_wrote(tmp_path, scope):
    dags = load_dag_module()
    write_metrics(tmp_path, {scope: {"uar": 0.25, "accuracy": 0.5}})
    with pytest.raises(
        dags.AirflowFailException,
        match=rf"quality gate: .*metrics\.json: {scope} UAR 0\.2500 .* threshold 0\.3000",
    ):
        dags.check_test_uar(tmp_path, 0.3)
    assert dags.check_test_uar(tmp_path, 0.25) == 0.25


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        (None, r"reports/metrics\.json: cannot read the test metrics"),
        ({"val": {"uar": 0.9}}, r"metrics\.json has no test UAR .*not pushed"),
        ([0.9], r"metrics\.json: expected a mapping of scopes"),
        ({"test": {"accuracy": 0.9}}, r"metrics\.json has no test UAR"),
    ],
)
def test_gate_names_the_file_when_it_has_no_headline_uar(tmp_path, metrics, message):
    dags = load_dag_module()
    if metrics is not None:
        write_metrics(tmp_path, metrics)
    with pytest.raises(dags.AirflowFailException, match=message):
        dags.check_test_uar(tmp_path, 0.3)


def lock_with_models(md5: str) -> str:
    """A dvc.lock whose train stage made ``models`` with hash ``md5``."""
    outs = [{"path": "models", "md5": md5}, {"path": "tuning/x.json", "md5": "0"}]
    return yaml.safe_dump({"schema": "2.0", "stages": {"train": {"outs": outs}}})


def test_a_new_model_is_one_the_cloned_commit_does_not_have(tmp_path):
    """The gate promotes only what the run made: a run that pulled every output made nothing."""
    dags = load_dag_module()
    run(["git", "init", "-q"], tmp_path)
    (tmp_path / "dvc.lock").write_text(lock_with_models("a.dir"))
    assert dags.made_a_new_model(tmp_path)  # nothing committed: every model is new
    run(["git", "add", "dvc.lock"], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock"], tmp_path)
    assert not dags.made_a_new_model(tmp_path)
    (tmp_path / "dvc.lock").write_text(lock_with_models("b.dir"))
    assert dags.made_a_new_model(tmp_path)


def test_gate_threshold_from_settings_then_params(monkeypatch, tmp_path):
    dags = load_dag_module()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"quality_gate": {"min_test_uar": 0.3}}))
    assert dags.min_test_uar(tmp_path) == 0.3
    monkeypatch.setenv("SER_MIN_TEST_UAR", "0.2")
    assert dags.min_test_uar(tmp_path) == 0.2


def test_commands_follow_the_settings(monkeypatch, tmp_path):
    dags = load_dag_module()
    monkeypatch.setattr(dags, "HOME_REPOSITORY", tmp_path / "home repo")
    checkout = tmp_path / "runs/scheduled-20250102-030000"
    assert dags.work_dir() == Path(os.environ["AIRFLOW_HOME"]) / "ser-runs"
    monkeypatch.setenv("SER_WORK_DIR", str(checkout.parent))
    assert dags.work_dir() == checkout.parent

    clone, configure = dags.checkout_command(checkout).split(f" && cd {checkout} && ")
    assert clone == (
        f"rm -rf {checkout} && git clone --quiet --branch main -- '{tmp_path}/home repo' {checkout}"
    )
    assert "cp " not in configure  # the home repository has no .dvc/config.local
    assert configure.endswith(
        f"dvc cache dir --local {tmp_path}/runs/dvc-cache && dvc pull --allow-missing"
    )
    config = tmp_path / "dvc.config"
    config.write_text("")
    monkeypatch.setenv("SER_GIT_REMOTE", "git@example.com:ser.git")
    monkeypatch.setenv("SER_GIT_REF", "v1.2")
    monkeypatch.setenv("SER_DVC_CONFIG", str(config))
    monkeypatch.setenv("SER_DVC_REMOTE", "gcs")
    command = dags.checkout_command(checkout)
    assert "--branch v1.2 -- git@example.com:ser.git" in command
    assert f" && cd {checkout} && cp {config} .dvc/config.local && git config" in command
    assert command.endswith("dvc pull --allow-missing --remote gcs")
    monkeypatch.setenv("SER_DVC_CONFIG", str(tmp_path / "missing"))
    with pytest.raises(dags.AirflowFailException, match=r"ser_dvc_config: no such file .*missing"):
        dags.checkout_command(checkout)

    name = checkout.name
    monkeypatch.delenv("PYTHONPATH", raising=False)
    assert dags.exp_run_command(checkout, name) == (
        f"export MLFLOW_TRACKING_URI='sqlite:///{tmp_path}/home repo/mlflow.db'"
        f" PYTHONPATH={checkout}/src && cd {checkout} && dvc exp run --name {name}"
    )  # the checkout's own code runs its stages, whatever copy of ser the worker has
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert dags.exp_run_command(checkout, name).startswith(
        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000 "
    )
    assert dags.exp_push_command(checkout, name) == (
        f"cd {checkout} && dvc exp push --force --remote gcs origin {name}"
    )


def standalone_settings(*overrides: str) -> dict[str, str]:
    """The environment ``make airflow-standalone`` starts Airflow with, as ``make -n`` prints it."""
    printed = run(["make", "-n", "airflow-standalone", *overrides], PROJECT_ROOT).stdout
    lines = printed.replace("\\\n", " ").splitlines()
    command = next(line for line in lines if line.endswith("airflow standalone"))
    return dict(word.split("=", 1) for word in shlex.split(command) if "=" in word)


def test_airflow_standalone_serves_on_the_loopback_interface_unless_told_otherwise(tmp_path):
    settings = standalone_settings()
    assert settings["AIRFLOW__API__HOST"] == "127.0.0.1"
    env = {**project_env(PROJECT_ROOT), **settings, "AIRFLOW_HOME": str(tmp_path)}
    host = run(["airflow", "config", "get-value", "api", "host"], tmp_path, env).stdout
    assert host.strip() == "127.0.0.1"  # the option the API server binds to
    assert standalone_settings("AIRFLOW_API_HOST=0.0.0.0")["AIRFLOW__API__HOST"] == "0.0.0.0"


def instance_processes(home: Path) -> dict[int, str]:
    """pid -> command line of every live process of the Airflow whose ``AIRFLOW_HOME`` is
    ``home``: those with it in their environment, and every process of their sessions (the
    LocalExecutor workers' titles overwrite their environment)."""
    processes = {}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            if proc.name.isdigit():
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                environ = (proc / "environ").read_bytes().split(b"\0")
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if fields[0] != "Z":  # a zombie has ended
                    processes[int(proc.name)] = (int(fields[3]), environ, command)
    marker = f"AIRFLOW_HOME={home}".encode()
    sessions = {session for session, environ, _ in processes.values() if marker in environ}
    return {
        pid: command
        for pid, (session, environ, command) in processes.items()
        if session in sessions or marker in environ
    }


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def local_executor_workers(home: Path) -> list[str]:
    return [c for c in instance_processes(home).values() if "LocalExecutor" in c]


@pytest.mark.slow
def test_make_airflow_standalone_stops_whole_on_one_ctrl_c(tmp_path):
    """Each of the scheduler's LocalExecutor workers, the API server and the rest ends."""
    ports = {
        "AIRFLOW_API_PORT": str(free_port()),  # a make variable
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }
    home = tmp_path / ".airflow"  # make's CURDIR is tmp_path: .airflow/ and dags/ there
    command = ["make", "-s", "-f", str(PROJECT_ROOT / "Makefile"), "-o", "install"]
    command += ["airflow-standalone", f"AIRFLOW_API_PORT={ports['AIRFLOW_API_PORT']}"]
    env = _without_ser_settings(project_env(PROJECT_ROOT)) | ports
    log_path = tmp_path / "standalone.log"
    with log_path.open("w") as log:
        make = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while "Airflow is ready" not in log_path.read_text():
            assert make.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                f"not ready in 300 s:\n{log_path.read_text()[-3000:]}"
            )
            time.sleep(1)
        while not local_executor_workers(home) and time.monotonic() < deadline:
            time.sleep(1)  # the scheduler starts them once it runs
        time.sleep(5)
        assert 1 <= len(local_executor_workers(home)) <= 2  # AIRFLOW_PARALLELISM, not 32
        api = f"http://127.0.0.1:{ports['AIRFLOW_API_PORT']}/api/v2/monitor/health"
        while not answers(api):  # the API server is not part of standalone's "ready"
            assert time.monotonic() < deadline, f"{api} did not answer"
            time.sleep(1)

        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C: the terminal signals make and its recipe
        stopped = time.monotonic()
        make.wait(60)
        while instance_processes(home) and time.monotonic() - stopped < 60:
            time.sleep(0.5)
        assert instance_processes(home) == {}, "left running after one Ctrl-C"
        assert time.monotonic() - stopped < 40  # the supervisor's 20 s grace, and margin
    finally:
        for pid in instance_processes(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


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


def set_variables(project: Path, env: dict[str, str], **variables: str) -> None:
    for name, value in variables.items():
        run(["airflow", "variables", "set", name, value], project, env)


def dags_test(project: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    """``airflow dags test``: its exit code and output (also kept in ``$AIRFLOW_HOME/dags-test.log``)."""
    result = run(["airflow", "dags", "test", DAG_ID, *args], project, env, check=False)
    output = result.stdout + result.stderr
    with (Path(env["AIRFLOW_HOME"]) / "dags-test.log").open("a") as log:
        log.write(output)
    return result.returncode, output


def task_states(env: dict[str, str]) -> dict[str, tuple[str, int]]:
    """``task_id -> (state, try_number)`` of the latest run in the metadata database."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, state, try_number FROM task_instance WHERE run_id ="
            " (SELECT run_id FROM dag_run ORDER BY id DESC LIMIT 1)"
        ).fetchall()
    return {task_id: (state, tries) for task_id, state, tries in rows}


def failed_at(task_id: str, tries: int = 1) -> dict[str, tuple[str, int]]:
    """The task states of a run whose ``task_id`` failed ``tries`` times: the rest skipped, the clone removed."""
    at = TASK_IDS.index(task_id)
    states = dict.fromkeys(TASK_IDS[:at], ("success", 1)) | {task_id: ("failed", tries)}
    states |= dict.fromkeys(TASK_IDS[at + 1 : -1], ("upstream_failed", 0))
    return states | {"remove_checkout": ("success", 1)}


def experiment_refs(git_remote: Path) -> dict[str, str]:
    """Experiment name -> commit of every DVC experiment ref in ``git_remote``."""
    listed = run(
        ["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"], git_remote
    )
    refs = dict(line.split() for line in listed.stdout.splitlines())
    return {ref.rsplit("/", 1)[1]: commit for ref, commit in refs.items()}


def project_remotes(repo: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A bare clone of ``repo`` (the git remote) and a DVC remote folder ``repo`` knows as ``backup``.

    ``backup`` is in ``repo``'s ``.dvc/config.local``, which every run checkout is given.
    """
    origin, dvc_remote = tmp_path / "origin.git", tmp_path / "dvc-remote"
    run(["git", "clone", "--quiet", "--bare", str(repo), str(origin)], tmp_path)
    run(["dvc", "remote", "add", "--local", "backup", str(dvc_remote)], repo)
    return origin, dvc_remote


def remote_has(remote: Path, md5: str) -> bool:
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def mlflow_runs(tracking: Path) -> dict[str, str]:
    """Run name -> ``dvc.exp_name`` tag of every run in the SQLite store ``tracking``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tracking}")
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return {
        found.info.run_name: found.data.tags["dvc.exp_name"]
        for found in client.search_runs(experiments)
    }


def registry_state(tracking: Path) -> dict[str, dict[str, str]]:
    """Aliases of the registered model ``ser-emotion`` and each version's quality-gate tag."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tracking}")
    aliases = client.get_registered_model("ser-emotion").aliases
    versions = client.search_model_versions("name = 'ser-emotion'")
    return {
        "aliases": {alias: str(version) for alias, version in aliases.items()},
        "gates": {str(v.version): v.tags.get("quality_gate", "") for v in versions},
    }


@pytest.mark.slow
def test_a_run_is_a_pushed_experiment_that_a_second_clone_finds(project_repo, tmp_path):
    """Run 1 passes the gate: its experiment and data reach the remotes. Run 2 fails it: nothing is pushed.

    A linear kind: the DAG is under test, not a network (no TensorFlow in any stage).
    """
    repo = project_repo({"model": {"kind": "logreg"}})
    origin, dvc_remote = project_remotes(repo, tmp_path)
    run(["dvc", "push", "--quiet", "--remote", "backup", "data/raw.dvc"], repo)
    tracking = tmp_path / "tracking.db"
    home = tmp_path / "airflow"
    env = airflow_env(
        repo,
        home,
        repo / "dags",
        SER_GIT_REMOTE=str(origin),
        SER_DVC_REMOTE="backup",  # not the default remote: --remote must be passed
        SER_MIN_TEST_UAR="0",
        SER_RETRIES="0",
    )
    set_variables(repo, env, ser_mlflow_tracking_uri=f"sqlite:///{tracking}")

    returncode, output = dags_test(repo, env, "2025-06-01T03:00:00+00:00")

    assert returncode == 0, f"see {home}/dags-test.log"
    assert task_states(env) == {task_id: ("success", 1) for task_id in TASK_IDS}
    name = "manual-20250601-030000"  # `airflow dags test` makes a manual run at that date
    main = run(["git", "rev-parse", "main"], origin).stdout.strip()
    assert set(experiment_refs(origin)) == {name}
    assert f"refs/exps/{main[:2]}/{main[2:]}/{name}" in run(["git", "show-ref"], origin).stdout
    assert "quality gate: test UAR" in output
    assert [path.name for path in (home / "ser-runs").iterdir()] == ["dvc-cache"]  # clone removed
    assert set(mlflow_runs(tracking).values()) == {name}
    assert {f"{name}:preprocess", f"{name}:train"} <= set(mlflow_runs(tracking))
    assert registry_state(tracking) == {
        "aliases": {"candidate": "1", "champion": "1"},
        "gates": {"1": "passed"},
    }

    clone = tmp_path / "second-clone"
    run(["git", "clone", "--quiet", str(origin), str(clone)], tmp_path)
    run(["dvc", "remote", "add", "--local", "backup", str(dvc_remote)], clone)
    run(["dvc", "exp", "pull", "--remote", "backup", "origin", name], clone)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout)
    experiments = {
        rev["name"]: rev["data"]
        for baseline in shown
        for experiment in baseline.get("experiments") or []
        for rev in experiment["revs"]
    }
    uar = experiments[name]["metrics"]["reports/metrics.json"]["data"]["test"]["uar"]
    assert 0 <= uar <= 1
    run(["dvc", "exp", "apply", name], clone)
    run(["dvc", "pull", "--remote", "backup"], clone)
    assert "Data and pipelines are up to date." in run(["dvc", "status"], clone).stdout
    assert json.loads((clone / "reports/metrics.json").read_text())["test"]["uar"] == uar
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    outs = {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])  # check_params writes nothing
    }
    for path in CACHED_OUTS:
        assert remote_has(dvc_remote, outs[path]) and (clone / path).exists(), path

    # the experiment made a branch, whose outputs are all in the DVC remote; a threshold no UAR reaches
    run(["dvc", "exp", "branch", name, "promoted"], clone)
    run(["git", "push", "--quiet", "origin", "promoted"], clone)
    set_variables(repo, env, ser_git_ref="promoted", ser_min_test_uar="1.01")  # Variables win

    returncode, output = dags_test(repo, env, "2025-06-02T03:00:00+00:00")

    assert returncode == 1
    assert task_states(env) == failed_at("quality_gate")
    assert "Stage 'train' didn't change, skipping" in output  # pulled, not rebuilt
    assert f"test UAR {uar:.4f} is below the threshold 1.0100" in output
    assert set(experiment_refs(origin)) == {name}
    assert registry_state(tracking)["aliases"] == {"candidate": "1", "champion": "1"}
    assert [path.name for path in (home / "ser-runs").iterdir()] == ["dvc-cache"]


@pytest.mark.slow
def test_failing_repro_is_retried_and_nothing_is_pushed(project_repo, tmp_path):
    repo = project_repo()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = "many"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "commit", "--quiet", "--all", "--message", "a misspelt knob"], repo)
    origin, dvc_remote = project_remotes(repo, tmp_path)
    env = airflow_env(
        repo,
        tmp_path / "airflow",
        repo / "dags",
        SER_GIT_REMOTE=str(origin),
        SER_DVC_REMOTE="backup",
        SER_RETRIES="1",
        SER_RETRY_DELAY_SECONDS="1",
    )

    returncode, output = dags_test(repo, env)

    assert returncode == 1
    assert task_states(env) == failed_at("dvc_exp_run", tries=2)
    assert "train.epochs" in output
    assert experiment_refs(origin) == {}
    assert not (dvc_remote / "files").exists()
