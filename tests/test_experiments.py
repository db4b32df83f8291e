"""`dvc exp run` sweeps: queued experiments land in `dvc exp show` and in the workspace's MLflow store."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import mlflow
import pytest
from conftest import run

QUEUE_DEADLINE = 420
"""Seconds both queued experiments of the tiny project may take (together a minute or two on two cores)."""
WORKER_FILES = Path(".dvc", "tmp", "exps", "celery")
"""Where dvc-task keeps each queue worker's pid and exit code (``*.json``) and log (``*.out``)."""


def _experiments(repo) -> dict[str, dict]:
    """Experiment name → its metrics files, from `dvc exp show --json`."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            revs = experiment.get("revs") or []
            for rev in revs:
                data = rev.get("data") or {}
                if rev.get("name"):
                    found[rev["name"]] = data.get("metrics", {})
    return found


@contextmanager
def queue_worker(repo: Path) -> Iterator[None]:
    """`dvc queue start -j 1` in ``repo``, and the worker stopped on the way out, whatever happened.

    The worker is a daemon that keeps the start command's stdout and stderr, so they go to a
    file, not to pipes the test would wait on. It exits only when dvc-task's monitor thread
    finds the queue empty, and that thread can die of a JSONDecodeError (kombu's filesystem
    transport reads a message before it is written; dvc issues 10398 and 10428), so the
    worker is told to stop and, failing that, its process group is killed.
    """
    run(
        ["dvc", "queue", "start", "-j", "1"], repo, output=repo / ".dvc" / "tmp" / "queue-start.log"
    )
    try:
        yield
    finally:
        run(["dvc", "queue", "stop", "--kill"], repo, check=False, timeout=120)
        _kill_leftover_workers(repo)


def _kill_leftover_workers(repo: Path, grace: float = 30) -> None:
    """SIGKILL the process group of each queue worker of ``repo`` still running after ``grace`` s."""
    workers = (repo / WORKER_FILES).glob("dvc-exp-worker-*.json")
    infos = [json.loads(worker.read_text()) for worker in workers]
    pids = [info["pid"] for info in infos if info.get("returncode") is None]
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(1)
    for pid in pids:
        with suppress(ProcessLookupError):
            group = os.getpgid(pid)
            if group == os.getpgrp():  # never the test's own group
                os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(group, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_queue(repo: Path, seconds: float) -> str:
    """Poll `dvc queue status` until no task is queued or running; its last output."""
    deadline = time.monotonic() + seconds
    while True:
        status = run(["dvc", "queue", "status"], repo, timeout=120).stdout
        if "Queued" not in status and "Running" not in status:
            return status
        if time.monotonic() > deadline:
            worker_log = "\n".join(
                log.read_text()[-3000:] for log in (repo / WORKER_FILES).glob("*.out")
            )
            raise AssertionError(
                f"queued experiments unfinished after {seconds:g} s:\n{status}\n{worker_log}"
            )
        time.sleep(5)


@pytest.mark.slow
def test_queued_experiments_are_compared_in_dvc_and_mlflow(project_repo) -> None:
    repo = project_repo({"model": {"kind": "logreg"}})  # the queue is under test, not a network
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)

    run(["dvc", "exp", "run", "--queue", "-n", "strong", "-S", "linear.C_grid=[0.001]"], repo)
    run(["dvc", "exp", "run", "--queue", "-n", "weak", "-S", "linear.C_grid=[10.0]"], repo)
    with queue_worker(repo):
        status = _wait_for_queue(repo, QUEUE_DEADLINE)
    assert "Failed" not in status, run(["dvc", "queue", "logs", "strong"], repo, check=False).stdout
    experiments = _experiments(repo)
    assert {"strong", "weak"} <= set(experiments)
    chosen = {
        name: experiments[name]["reports/train.json"]["data"]["C"] for name in ("strong", "weak")
    }
    assert chosen == {"strong": 0.001, "weak": 10.0}
    assert "test" in experiments["strong"]["reports/metrics.json"]["data"]

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ser"], output_format="list")
    training = {
        r.data.tags["dvc.exp_name"]: r for r in runs if r.data.tags.get("ser.stage") == "train"
    }
    assert {"strong", "weak"} <= set(training)
    assert training["weak"].data.metrics["final_C"] == 10.0
    assert "test_uar" in training["weak"].data.metrics
