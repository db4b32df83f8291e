"""The MLflow Model Registry (ser.serve.registry): versions with alias candidate, and the quality gate that moves champion."""

from __future__ import annotations

import re
import shutil

import mlflow
import pytest
from conftest import PROJECT_ROOT, make_params
from mlflow import MlflowClient

from ser import paths
from ser.cli import main
from ser.ops.tracking import MODELS_TAG, content_sha256
from ser.serve.gate import GateFailed, NoTestMetrics
from ser.serve.registry import (
    CANDIDATE,
    CHAMPION,
    RegistryError,
    promote,
    register_candidate,
)

NAME = "ser-emotion"  # params.yaml's mlflow.registered_model


@pytest.fixture
def client(mlflow_workspace) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{mlflow_workspace / 'mlflow.db'}")
    mlflow.set_experiment("registry")
    return MlflowClient()


def trained_version(client: MlflowClient, metrics: dict[str, float], models: str = "m") -> str:
    """A training run with ``metrics`` (as evaluate logs them), registered as a candidate
    whose model has the content hash ``models``."""
    with mlflow.start_run() as run:
        mlflow.log_metrics(metrics)
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run.info.run_id)
    register_candidate(client, NAME, version.version, {"kind": "fusion", MODELS_TAG: models})
    return str(version.version)


def write_models(content: str) -> str:
    """A ``models/`` folder in the working directory; its content hash."""
    paths.MODELS_DIR.mkdir(exist_ok=True)
    (paths.MODELS_DIR / "classifier.json").write_text(content)
    return content_sha256(paths.MODELS_DIR)


def aliases(client: MlflowClient) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(NAME).aliases.items()}


def test_a_new_version_becomes_the_candidate(client):
    first = trained_version(client, {"test_uar": 0.6})
    second = trained_version(client, {"test_uar": 0.5})
    assert aliases(client) == {CANDIDATE: second}
    assert client.get_model_version(NAME, first).tags == {"kind": "fusion", MODELS_TAG: "m"}


def test_a_passing_version_becomes_the_champion(client):
    version = trained_version(client, {"test_uar": 0.61})
    assert promote(make_params(), version, min_uar=0.6) == version
    assert aliases(client)[CHAMPION] == version
    tags = client.get_model_version(NAME, version).tags
    assert tags["quality_gate"] == "passed"
    assert tags["test_uar"] == "0.6100"


def test_a_failing_version_leaves_the_champion_where_it_was(client):
    champion = trained_version(client, {"test_uar": 0.7})
    promote(make_params(), champion, min_uar=0.6)
    worse = trained_version(client, {"test_uar": 0.4})
    message = f"quality gate: version {worse} of {NAME}: test UAR 0.4000 is below the threshold 0.6000; champion stays version {champion}"
    with pytest.raises(GateFailed, match=re.escape(message)):
        promote(make_params(), worse, min_uar=0.6)
    assert aliases(client) == {CHAMPION: champion, CANDIDATE: worse}
    assert client.get_model_version(NAME, worse).tags["quality_gate"] == "failed"


def test_the_threshold_defaults_to_the_params_one(client):
    version = trained_version(client, {"test_uar": 0.31})
    params = make_params({"quality_gate": {"min_test_uar": 0.32}})
    with pytest.raises(GateFailed, match=r"below the threshold 0\.3200; champion stays unset"):
        promote(params, version)


def test_a_speaker_normalised_headline_is_judged_and_named(client):
    version = trained_version(client, {"test_speaker_normalised_uar": 0.5})
    with pytest.raises(GateFailed, match=r"test_speaker_normalised UAR 0\.5000"):
        promote(make_params(), version, min_uar=0.6)


def test_a_version_without_test_metrics_cannot_be_judged(client):
    version = trained_version(client, {"val_uar": 0.9})
    with pytest.raises(
        NoTestMetrics, match=f"version {version} of {NAME} has no test UAR .*run the evaluate"
    ):
        promote(make_params(), version, min_uar=0.1)
    assert CHAMPION not in aliases(client)


def test_the_default_version_is_the_one_whose_model_is_in_the_workspace(client):
    mine = write_models('{"kind": "fusion"}')
    trained_version(client, {"test_uar": 0.9}, models="another model")
    expected = trained_version(client, {"test_uar": 0.8}, models=mine)
    trained_version(client, {"test_uar": 0.9}, models="another model")  # registered later
    assert promote(make_params(), min_uar=0.5) == expected
    write_models('{"kind": "logreg"}')  # e.g. `dvc exp apply` of another experiment
    with pytest.raises(
        RegistryError, match=r"the model in models/ \(sha256 \w{12}\) is no version"
    ):
        promote(make_params(), min_uar=0.5)


def test_of_versions_with_the_same_bytes_the_newest_with_test_metrics_is_judged(client):
    mine = write_models('{"kind": "logreg"}')
    tested = trained_version(client, {"test_uar": 0.8}, models=mine)
    trained_version(client, {"val_uar": 0.9}, models=mine)  # its evaluate never ran
    assert promote(make_params(), min_uar=0.5) == tested


def test_without_a_model_in_the_workspace_nothing_is_promoted(client):
    trained_version(client, {"test_uar": 0.9})
    with pytest.raises(RegistryError, match=r"no model in models/ to promote .*--version"):
        promote(make_params())


def test_an_unknown_version_is_a_clear_error(client):
    trained_version(client, {"test_uar": 0.9})
    with pytest.raises(RegistryError, match=f"registered model '{NAME}': .*7"):
        promote(make_params(), "7")


def test_ser_promote_exits_1_below_the_threshold_and_0_above(client, caplog):
    shutil.copy(PROJECT_ROOT / "params.yaml", "params.yaml")
    low = trained_version(client, {"test_uar": 0.3})
    high = trained_version(client, {"test_uar": 0.7})
    assert main(["promote", "--version", low, "--min-uar", "0.5"]) == 1
    assert "quality gate: version" in caplog.text
    assert main(["promote", "--version", high, "--min-uar", "0.5"]) == 0
    assert aliases(client)[CHAMPION] == high
    assert main(["promote", "--version", "99"]) == 2
