"""The real `dvc repro` on a tiny generated corpus in a temporary repository.

One full reproduction of the default kind (fusion, its spectrogram CNN tiny) is shared by the
tests of this module (in file order); the last ones force a second reproduction that
must give the same bytes, and add a `dvc exp run` that swaps in a linear baseline,
re-running only training and evaluation.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import make_project_repo, run, write_ravdess_corpus

from ser import EMOTIONS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project repository with 84 generated clips (6 speakers) after `dvc repro`."""
    corpus = tmp_path_factory.mktemp("corpus")
    write_ravdess_corpus(corpus)
    repository = make_project_repo(tmp_path_factory.mktemp("e2e") / "repo", corpus)
    run(["dvc", "repro"], repository)
    return repository


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def status(repository: Path) -> dict:
    return json.loads(run(["dvc", "status", "--json"], repository).stdout or "{}")


def training_runs(repository: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{repository / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ser")
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("ser.stage") == "train"]


def test_metrics_and_outputs(repo):
    metrics = read_json(repo / "reports/metrics.json")
    assert set(metrics) == {"test"}
    assert set(metrics["test"]) == {"accuracy", "uar", "macro_f1", "clips"}
    assert 0 <= metrics["test"]["uar"] <= 1
    report = read_json(repo / "reports/preprocess.json")
    assert metrics["test"]["clips"] == report["splits"]["test"]["clips"]
    assert report["skipped"] == 0 and "extraction" not in report  # no run-specific facts
    train = read_json(repo / "reports/train.json")
    chosen = {"val_uar", "val_accuracy", "epochs", "C", "weight", "train_rows", "refit_rows"}
    assert chosen <= set(train)
    assert train["train_rows"] == 2 * report["splits"]["train"]["clips"]  # + one noise copy
    models = repo / "models"
    assert sorted(str(p.relative_to(models)) for p in models.rglob("*") if p.is_file()) == [
        "classifier.json",
        "fusion.json",
        "logreg/model.joblib",
        "logreg/preprocessing.joblib",
        "spectrogram_cnn/spectrogram_cnn.keras",
    ]
    assert read_json(models / "classifier.json")["kind"] == "fusion"
    assert read_json(models / "fusion.json")["weight"] == train["weight"]
    assert read_json(repo / "tuning/hyperparams.json")["kind"] == "fusion"
    assert (repo / "tuning/study/trials.csv").is_file()
    assert (repo / "data/processed/frames.npz").is_file()
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert json.dumps(shown).count('"uar"') >= 1


def test_plots_are_rendered_by_dvc(repo):
    with (repo / "reports/training_curve.csv").open() as handle:
        curve = list(csv.DictReader(handle))
    assert {"epoch", "loss", "accuracy", "val_uar", "learning_rate"} <= set(curve[0])
    assert len(curve) == read_json(repo / "reports/train.json")["epochs"]
    with (repo / "reports/predictions.csv").open() as handle:
        predictions = list(csv.DictReader(handle))
    assert {"actual", "predicted"} <= set(predictions[0])
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    assert set(plots) == {
        "reports/training_curve.csv",
        "reports/predictions.csv",
        "Loss",
        "Accuracy",
    }
    for rendered in plots.values():
        assert rendered[0]["type"] == "vega"
        assert rendered[0]["content"]["data"]["values"]
    assert (repo / "reports/confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_mlflow_runs_carry_stages_metrics_and_tags(repo):
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ser")
    runs = client.search_runs([experiment.experiment_id])
    stages = {r.data.tags.get("ser.stage") for r in runs}
    assert stages == {"preprocess", "train"}  # no empty tune run while tuning is off

    (training,) = training_runs(repo)
    assert training.info.run_id == read_json(repo / ".ser/train_run.json")["run_id"]
    test_uar = read_json(repo / "reports/metrics.json")["test"]["uar"]
    assert training.data.metrics["test_uar"] == pytest.approx(test_uar)
    assert training.data.params["spectrogram_cnn.epochs"] == "3"

    commit = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    data_md5 = yaml.safe_load((repo / "data/raw.dvc").read_text())["outs"][0]["md5"]
    for logged in runs:
        assert logged.data.tags["mlflow.source.git.commit"] == commit
        assert logged.data.tags["dvc.exp_name"] == "workspace"
        assert logged.data.tags["data.version"] == data_md5


def test_status_is_clean_after_repro(repo):
    assert status(repo) == {}


def test_git_ignores_what_dvc_caches(repo):
    assert run(["git", "diff", "--name-only", ".gitignore"], repo).stdout == ""  # nothing to add
    untracked = run(["git", "status", "--porcelain", "--untracked-files=all"], repo).stdout
    to_commit = (".gitignore", "dvc.lock")  # what DVC wrote for git: outputs stay out of it
    assert [line for line in untracked.splitlines() if not line.endswith(to_commit)] == []


def test_checkout_restores_every_output(repo):
    for output in ("reports/train.json", "reports/preprocess.json", "models/classifier.json"):
        before = (repo / output).read_bytes()
        (repo / output).unlink()
        run(["dvc", "checkout", "-q"], repo)
        assert (repo / output).read_bytes() == before, output


def edited_params(repository: Path, section: str, key: str, value: object) -> dict:
    """`dvc status` after setting one knob in params.yaml (restored afterwards)."""
    path = repository / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        return status(repository)
    finally:
        path.write_text(original)


def test_a_training_knob_invalidates_training_not_features(repo):
    """Evaluate re-runs too once train has produced a new model (see the `dvc exp run` test)."""
    changed = edited_params(repo, "spectrogram_cnn", "epochs", 5)
    assert set(changed) == {"check_params", "tune", "train"}
    assert "params.yaml" in json.dumps(changed["train"])
    assert status(repo) == {}  # the knob was put back


def test_a_feature_knob_invalidates_preprocessing(repo):
    changed = edited_params(repo, "features", "n_mfcc", 20)
    # train too: the model records the feature settings its inputs need (classifier.json)
    assert set(changed) == {"check_params", "preprocess", "train"}
    assert "params.yaml" in json.dumps(changed["preprocess"])


def test_a_misspelt_section_fails_naming_it(repo):
    path = repo / "params.yaml"
    original = path.read_text()
    path.write_text(original + "trian:\n  epochs: 5\n")
    try:
        failed = run(["dvc", "repro"], repo, check=False)
    finally:
        path.write_text(original)
    assert failed.returncode != 0
    assert "trian: unknown key" in failed.stdout + failed.stderr
    assert status(repo) == {}


def test_a_forced_repro_gives_the_same_bytes(repo):
    """Run-specific facts (times, cache hits, run ids) stay out of the outputs."""
    lock = (repo / "dvc.lock").read_text()
    run(["dvc", "repro", "-f"], repo)
    assert (repo / "dvc.lock").read_text() == lock


def test_an_experiment_with_a_linear_kind_is_recorded_and_runs_the_same_stages(repo):
    run(["dvc", "exp", "run", "-n", "logreg", "-S", "model.kind=logreg"], repo)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    experiments = {
        rev["name"]: rev["data"]
        for baseline in shown
        for experiment in baseline.get("experiments") or []
        for rev in experiment.get("revs") or []
        if rev.get("name")
    }
    recorded = experiments["logreg"]
    assert recorded["params"]["params.yaml"]["data"]["model"]["kind"] == "logreg"
    assert 0 <= recorded["metrics"]["reports/metrics.json"]["data"]["test"]["uar"] <= 1
    assert sorted(p.name for p in (repo / "models").iterdir()) == sorted(
        ["model.joblib", "preprocessing.joblib", "classifier.json"]
    )
    train = read_json(repo / "reports/train.json")
    grid = yaml.safe_load((repo / "params.yaml").read_text())["linear"]["C_grid"]
    assert train["C"] in grid and "epochs_run" not in train
    with (repo / "reports/training_curve.csv").open() as handle:
        curve = list(csv.DictReader(handle))
    assert [float(row["C"]) for row in curve] == sorted(grid)
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    assert all(rendered[0]["content"]["data"]["values"] for rendered in plots.values())
    assert status(repo) == {}

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ser").experiment_id])
    rerun = {r.data.tags["ser.stage"] for r in runs if r.data.tags["dvc.exp_name"] == "logreg"}
    assert rerun == {"train"}  # preprocess was not re-run; evaluate joined train's run
    by_experiment = {r.data.tags["dvc.exp_name"]: r for r in training_runs(repo)}
    assert set(by_experiment) == {"workspace", "logreg"}
    logged = by_experiment["logreg"]
    assert logged.info.run_name == "logreg:train"
    assert logged.data.params["model.kind"] == "logreg"
    assert float(logged.data.params["chosen.C"]) == train["C"]
    test_uar = read_json(repo / "reports/metrics.json")["test"]["uar"]
    assert logged.data.metrics["test_uar"] == pytest.approx(test_uar)

    clip = next((repo / "data/raw").rglob("*.flac"))
    predicted = run(["ser", "predict", "--json", str(clip)], repo).stdout
    assert json.loads(predicted)["label"] in EMOTIONS
