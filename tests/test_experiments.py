"""`dvc exp run` sweeps: queued experiments land in `dvc exp show` and in the workspace's MLflow store."""

from __future__ import annotations

import json
import time

import mlflow
import pytest
from conftest import run


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


@pytest.mark.slow
def test_queued_experiments_are_compared_in_dvc_and_mlflow(project_repo) -> None:
    repo = project_repo()
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)

    run(["dvc", "exp", "run", "--queue", "-n", "short", "-S", "train.epochs=1"], repo)
    run(["dvc", "exp", "run", "--queue", "-n", "longer", "-S", "train.epochs=4"], repo)
    run(["dvc", "queue", "start", "-j", "1"], repo)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status, run(["dvc", "queue", "logs", "short"], repo, check=False).stdout

    experiments = _experiments(repo)
    assert {"short", "longer"} <= set(experiments)
    epochs = {
        name: experiments[name]["reports/train.json"]["data"]["epochs_run"]
        for name in ("short", "longer")
    }
    assert epochs["short"] == 1 and epochs["longer"] > 1
    assert "test" in experiments["short"]["reports/metrics.json"]["data"]

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ser"], output_format="list")
    training = {
        r.data.tags["dvc.exp_name"]: r for r in runs if r.data.tags.get("ser.stage") == "train"
    }
    assert {"short", "longer"} <= set(training)
    assert training["short"].data.params["train.epochs"] == "1"
    assert "test_uar" in training["longer"].data.metrics
