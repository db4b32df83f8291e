"""MLflow runs per stage, tagged with git commit, DVC experiment and data version."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import PROJECT_ROOT, make_params, run

from ser.config import flatten
from ser.ops.tracking import (
    FEATURES_TAG,
    MODELS_TAG,
    artifact_root,
    connect,
    content_sha256,
    data_version,
    run_tags,
    runs_tagged,
    stage_run,
    tracking_uri,
    ui_address,
)


def client(workspace: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")


def all_runs(workspace: Path) -> list:
    store = client(workspace)
    experiment = store.get_experiment_by_name("ser")
    return store.search_runs([experiment.experiment_id]) if experiment else []


@pytest.fixture
def git_workspace(mlflow_workspace):
    """The MLflow workspace as a git repository with one commit and DVC-tracked raw data."""
    (mlflow_workspace / "data").mkdir()
    (mlflow_workspace / "data" / "raw.dvc").write_text(
        yaml.safe_dump({"outs": [{"md5": "0123abcd.dir", "nfiles": 84, "path": "raw"}]})
    )
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    run(["git", "init", "-q", "-b", "main"], mlflow_workspace, env=env)
    run(["git", "add", "data/raw.dvc"], mlflow_workspace, env=env)
    run(["git", "commit", "-qm", "data"], mlflow_workspace, env=env)
    commit = run(["git", "rev-parse", "HEAD"], mlflow_workspace, env=env).stdout.strip()
    return mlflow_workspace, commit


def test_tracking_uri_defaults_to_the_working_directory(mlflow_workspace):
    assert tracking_uri() == f"sqlite:///{mlflow_workspace.resolve()}/mlflow.db"


def test_tracking_uri_follows_the_environment(mlflow_workspace, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"


def test_queued_experiment_copy_maps_back_to_the_workspace(mlflow_workspace, monkeypatch):
    """DVC runs queued experiments in a copy under .dvc/tmp/exps and names the workspace in DVC_ROOT."""
    copy = mlflow_workspace / ".dvc" / "tmp" / "exps" / "tmpab12cd" / "repo"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(mlflow_workspace))
    assert tracking_uri() == f"sqlite:///{mlflow_workspace.resolve()}/mlflow.db"
    with stage_run("train", make_params()):
        mlflow.log_metric("x", 1.0)
    assert not (copy / "mlflow.db").exists()
    assert [r.data.tags["ser.stage"] for r in all_runs(mlflow_workspace)] == ["train"]


def test_data_version_is_the_recorded_hash(tmp_path):
    path = tmp_path / "raw.dvc"
    path.write_text("outs:\n- md5: 1a2b3c.dir\n  size: 10\n  nfiles: 2\n  path: raw\n")
    assert data_version(path) == "1a2b3c.dir"


@pytest.mark.parametrize(
    "content",
    [None, "", "outs: [\n", "other: 1\n", "outs:\n- path: raw\n"],
    ids=["missing", "empty", "bad-yaml", "no-outs", "no-md5"],
)
def test_data_version_is_unknown_without_a_hash(tmp_path, content):
    path = tmp_path / "raw.dvc"
    if content is not None:
        path.write_text(content)
    assert data_version(path) == "unknown"


def test_tags_name_commit_experiment_and_data(git_workspace, monkeypatch):
    _, commit = git_workspace
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lark")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "f" * 40)
    assert run_tags("train") == {
        "ser.stage": "train",
        "mlflow.source.git.commit": commit,
        "dvc.exp_name": "lucky-lark",
        "dvc.exp_baseline": "f" * 40,
        "data.version": "0123abcd.dir",
    }


def test_tags_outside_git_and_dvc(mlflow_workspace):
    tags = run_tags("preprocess")
    assert tags["mlflow.source.git.commit"] == "unknown"
    assert tags["data.version"] == "unknown"
    assert tags["dvc.exp_name"] == "workspace"


def test_stage_run_logs_tags_and_every_param_to_the_local_store(git_workspace, monkeypatch):
    workspace, commit = git_workspace
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lark")
    params = make_params()
    with stage_run("train", params) as active:
        mlflow.log_metric("val_uar", 0.5)
    logged = client(workspace).get_run(active.info.run_id)
    assert logged.info.run_name == "lucky-lark:train"
    assert logged.data.tags["mlflow.source.git.commit"] == commit
    assert logged.data.tags["dvc.exp_name"] == "lucky-lark"
    assert logged.data.tags["data.version"] == "0123abcd.dir"
    assert logged.data.params == {k: str(v) for k, v in flatten(params).items()}
    assert logged.data.metrics == {"val_uar": 0.5}
    experiment = client(workspace).get_experiment(logged.info.experiment_id)
    assert experiment.artifact_location == (workspace.resolve() / "mlartifacts").as_uri()
    assert mlflow.get_tracking_uri() == f"sqlite:///{workspace.resolve()}/mlflow.db"
    assert str(PROJECT_ROOT) not in mlflow.get_tracking_uri()


def test_run_name_is_the_stage_outside_experiments(mlflow_workspace):
    with stage_run("preprocess", make_params()) as active:
        pass
    assert client(mlflow_workspace).get_run(active.info.run_id).info.run_name == "preprocess"


def test_reopening_a_run_adds_to_it(mlflow_workspace):
    params = make_params()
    with stage_run("train", params) as train_run:
        mlflow.log_metric("val_uar", 0.4)
    with stage_run("evaluate", params, run_id=train_run.info.run_id) as reopened:
        mlflow.log_metric("test_uar", 0.3)
    assert reopened.info.run_id == train_run.info.run_id
    runs = all_runs(mlflow_workspace)
    assert len(runs) == 1
    assert runs[0].data.metrics == {"val_uar": 0.4, "test_uar": 0.3}
    assert runs[0].data.tags["ser.stage"] == "train"


def test_an_unknown_run_id_starts_a_new_run(mlflow_workspace, caplog):
    with (
        caplog.at_level(logging.WARNING, logger="ser.ops.tracking"),
        stage_run("evaluate", make_params(), run_id="0" * 32) as active,
    ):
        mlflow.log_metric("test_uar", 0.3)
    assert active.info.run_id != "0" * 32
    assert "is not in" in caplog.text
    assert [r.data.tags["ser.stage"] for r in all_runs(mlflow_workspace)] == ["evaluate"]


def test_configured_experiment_name_is_used(mlflow_workspace):
    with stage_run("tune", make_params({"mlflow": {"experiment": "other"}})) as active:
        pass
    experiment = client(mlflow_workspace).get_experiment(active.info.experiment_id)
    assert experiment.name == "other"


def test_an_experiment_another_process_creates_first_gets_the_runs(mlflow_workspace, monkeypatch):
    """Two processes starting on a fresh store: both look the experiment up, find none, and
    one creates it first; the other's runs must still land in it, not in Default."""
    lookup = mlflow.MlflowClient.get_experiment_by_name
    calls = []

    def racing_lookup(self, name):
        calls.append(name)
        if len(calls) == 1:  # the other process creates it right after this lookup
            mlflow.MlflowClient(tracking_uri()).create_experiment(name)
            return None
        return lookup(self, name)

    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", racing_lookup)
    with stage_run("tune", make_params({"mlflow": {"experiment": "shared"}})) as active:
        pass
    experiment = client(mlflow_workspace).get_experiment(active.info.experiment_id)
    assert experiment.name == "shared"


def test_the_ui_address_opens_the_experiments_runs_table(mlflow_workspace):
    base = "http://127.0.0.1:5000/"
    view = "?workflowType=machine_learning"  # MLflow 3 opens its GenAI overview otherwise
    assert ui_address(base, "ser") == f"http://127.0.0.1:5000/#/experiments{view}"
    with stage_run("train", make_params()):
        pass
    experiment = mlflow.get_experiment_by_name("ser").experiment_id
    assert ui_address(base, "ser") == f"http://127.0.0.1:5000/#/experiments/{experiment}{view}"


def test_a_sqlite_store_keeps_new_experiments_artifacts_beside_its_file(
    mlflow_workspace, monkeypatch
):
    store = mlflow_workspace / "elsewhere" / "tracking.db"
    store.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.chdir(store.parent.parent)  # not where the store is
    with stage_run("train", make_params()):
        pass
    experiment = mlflow.get_experiment_by_name("ser")
    assert experiment.artifact_location == (store.parent / "mlartifacts").as_uri()
    assert artifact_root("http://127.0.0.1:5000") is None  # a server chooses its own


def test_content_hashes_follow_names_and_bytes_not_places(tmp_path):
    first, second = tmp_path / "a" / "models", tmp_path / "b" / "models"
    for folder in (first, second):
        (folder / "logreg").mkdir(parents=True)
        (folder / "classifier.json").write_text('{"kind": "fusion"}')
        (folder / "logreg" / "model.joblib").write_bytes(b"\x00\x01")
    assert content_sha256(first) == content_sha256(second)
    (second / "logreg" / "model.joblib").rename(second / "logreg" / "other.joblib")
    assert content_sha256(first) != content_sha256(second)
    (first / "classifier.json").write_text('{"kind": "logreg"}')
    assert content_sha256(first / "classifier.json") != content_sha256(second / "classifier.json")
    assert content_sha256(first, tmp_path / "missing") == content_sha256(first)


def test_runs_are_found_by_their_tags_newest_first(mlflow_workspace):
    found = [("m1", "f1"), ("m1", "f1"), ("m1", "f2"), ("m2", "f1")]
    ids = []
    for models, features in found:
        with stage_run("train", make_params()) as active:
            mlflow.set_tags({MODELS_TAG: models, FEATURES_TAG: features})
        ids.append(active.info.run_id)
    tagged = runs_tagged({MODELS_TAG: "m1", FEATURES_TAG: "f1"}, "ser")
    assert [r.info.run_id for r in tagged] == [ids[1], ids[0]]
    assert runs_tagged({MODELS_TAG: "m1"}, "no such experiment") == []


def test_a_moved_store_reads_its_artifacts_from_its_new_place(tmp_path, monkeypatch):
    """A checkout moved or copied with its mlflow.db and mlartifacts/ keeps its runs' files."""
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    before, after = tmp_path / "checkout", tmp_path / "moved" / "checkout"
    before.mkdir()
    monkeypatch.chdir(before)
    Path("curve.csv").write_text("epoch,val_uar\n1,0.5\n")
    with stage_run("train", make_params()) as active:
        mlflow.log_artifact("curve.csv")
    run_id = active.info.run_id
    registry = mlflow.MlflowClient()
    registry.create_registered_model("curves")
    registry.create_model_version("curves", f"{active.info.artifact_uri}/curve.csv", run_id)
    after.parent.mkdir()
    shutil.move(before, after)
    monkeypatch.chdir(after)

    connect()
    logged = mlflow.MlflowClient().get_run(run_id)
    assert logged.info.artifact_uri == f"{(after / 'mlartifacts').as_uri()}/{run_id}/artifacts"
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="curve.csv", dst_path=str(tmp_path / "back")
    )
    assert Path(downloaded).read_text() == "epoch,val_uar\n1,0.5\n"
    experiment = mlflow.get_experiment_by_name("ser")
    assert experiment.artifact_location == (after / "mlartifacts").as_uri()
    version = mlflow.MlflowClient().get_model_version("curves", "1")
    assert version.source == f"{logged.info.artifact_uri}/curve.csv"
    connect()  # nothing left to move
    assert mlflow.MlflowClient().get_run(run_id).info.artifact_uri == logged.info.artifact_uri
