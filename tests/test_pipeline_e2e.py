"""The real `dvc repro`, `dvc exp run --queue` and a fresh `git clone` on a tiny generated corpus.

One project repository is shared by the tests of this module, in file order: a full
reproduction of the fusion kind (both members, its spectrogram CNN tiny), committed with its
reports; a forced reproduction that must give the same bytes; three queued experiments
that swap in a linear kind, two of which train the same model bytes; then `dvc exp apply`,
`ser promote` and fresh clones that show every committed result without a DVC remote.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import PROJECT_ROOT, make_project_repo, project_env, run, write_ravdess_corpus

from ser import EMOTIONS
from ser.ops.tracking import MODELS_TAG, content_sha256

pytestmark = pytest.mark.slow

REPORTS = [
    "reports/confusion_matrix.png",
    "reports/evaluation.json",
    "reports/metrics.json",
    "reports/predictions.csv",
    "reports/preprocess.json",
    "reports/reliability.csv",
    "reports/reliability.png",
    "reports/train.json",
    "reports/training_curve.csv",
]
"""The `cache: false` outputs: committed to git, so that a fresh clone shows them."""
SWEEP = {  # name -> overrides: `low-again` trains the bytes of `low` (linear.C is unused)
    "low": ["model.kind=logreg", "linear.C_grid=[0.001]"],
    "high": ["model.kind=logreg", "linear.C_grid=[10.0]"],
    "low-again": ["model.kind=logreg", "linear.C_grid=[0.001]", "linear.C=0.5"],
}
QUEUE_DEADLINE = 600
"""Seconds the queued experiments of the tiny project may take (together two minutes or so)."""
WORKER_FILES = Path(".dvc", "tmp", "exps", "celery")
"""Where dvc-task keeps each queue worker's pid and exit code (``*.json``) and log (``*.out``)."""
FRESH_CLONE_SECONDS = 30
"""What one read-only dvc command in a fresh clone may take on a busy 2-core machine (it
took 1 min 40 s to 3 min 20 s when it tried to reach a remote for the results)."""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project repository with 84 generated clips (6 speakers) after `dvc repro`, committed."""
    corpus = tmp_path_factory.mktemp("corpus")
    write_ravdess_corpus(corpus)
    # fusion trains both members (the default kind is its spectrogram CNN); a short C grid:
    # fusion's logreg fits fewer, and `make exp-show` has a narrower baseline
    override = {"model": {"kind": "fusion"}, "linear": {"C_grid": [0.01, 1.0]}}
    repository = make_project_repo(tmp_path_factory.mktemp("e2e") / "repo", corpus, override)
    run(["dvc", "repro"], repository)
    run(["git", "add", "-A"], repository)
    run(["git", "commit", "-qm", "pipeline run"], repository)
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
    assert set(metrics["test"]) == {
        "accuracy",
        "uar",
        "macro_f1",
        "clips",
        "ece",
        "ece_uncalibrated",
    }
    assert 0 <= metrics["test"]["uar"] <= 1 and 0 <= metrics["test"]["ece"] <= 1
    report = read_json(repo / "reports/preprocess.json")
    assert metrics["test"]["clips"] == report["splits"]["test"]["clips"]
    assert report["skipped"] == 0 and "extraction" not in report  # no run-specific facts
    train = read_json(repo / "reports/train.json")
    chosen = {"val_uar", "val_accuracy", "epochs", "C", "network_weight", "linear_weight"}
    chosen |= {"train_rows", "refit_rows"}
    assert chosen <= set(train)
    assert train["train_rows"] == 2 * report["splits"]["train"]["clips"]  # + one noise copy
    models = repo / "models"
    assert sorted(str(p.relative_to(models)) for p in models.rglob("*") if p.is_file()) == [
        "classifier.json",
        "fusion.json",
        "logreg/model.joblib",
        "logreg/preprocessing.joblib",
        "monitor_reference.parquet",
        "spectrogram_cnn/spectrogram_cnn.keras",
    ]
    assert read_json(models / "classifier.json")["kind"] == "fusion"
    pooled = read_json(models / "fusion.json")
    assert pooled == {
        "pooling": "average",
        "weights": [train["network_weight"], train["linear_weight"]],
    }
    assert train["network_weight"] + train["linear_weight"] == pytest.approx(1.0)
    assert read_json(repo / "tuning/hyperparams.json")["kind"] == "fusion"
    assert (repo / "tuning/study/trials.csv").is_file()
    assert (repo / "data/processed/frames.npz").is_file()


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
        "reports/reliability.csv",
        "Loss",
        "Accuracy",
        "Reliability",
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
    assert training.data.tags[MODELS_TAG] == content_sha256(repo / "models")
    train = read_json(repo / "reports/train.json")
    assert {k: training.data.metrics[k] for k in train} == pytest.approx(train)  # DVC's names
    test_uar = read_json(repo / "reports/metrics.json")["test"]["uar"]
    assert training.data.metrics["test_uar"] == pytest.approx(test_uar)
    assert training.data.params["spectrogram_cnn.epochs"] == "3"

    commit = run(["git", "rev-parse", "HEAD~1"], repo).stdout.strip()  # before the results
    data_md5 = yaml.safe_load((repo / "data/raw.dvc").read_text())["outs"][0]["md5"]
    for logged in runs:
        assert logged.data.tags["mlflow.source.git.commit"] == commit
        assert logged.data.tags["dvc.exp_name"] == "workspace"
        assert logged.data.tags["data.version"] == data_md5


def test_status_is_clean_after_repro(repo):
    assert status(repo) == {}


def test_git_carries_the_reports_and_ignores_what_dvc_caches(repo):
    committed = run(["git", "show", "--name-only", "--format=", "HEAD"], repo).stdout.split()
    dvc_ignores = ["data/processed/.gitignore", "tuning/.gitignore"]  # written by dvc repro
    assert sorted(committed) == sorted(["dvc.lock", *dvc_ignores, *REPORTS])
    assert run(["git", "status", "--porcelain", "--untracked-files=all"], repo).stdout == ""


def timed(command: list[str], clone: Path) -> str:
    """``command``'s stdout in ``clone``; it must end within :data:`FRESH_CLONE_SECONDS`
    and log no error (dvc logs each attempt to reach a remote as one)."""
    started = time.monotonic()
    result = run(command, clone, timeout=120)
    elapsed = time.monotonic() - started
    assert elapsed < FRESH_CLONE_SECONDS, f"{' '.join(command)} took {elapsed:.0f} s"
    assert "ERROR" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    return result.stdout


def test_a_fresh_clone_shows_every_result_offline_in_seconds(repo, tmp_path):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / ".dvc" / "cache").exists() and not (clone / "models").exists()
    assert run(["dvc", "remote", "list"], clone).stdout.strip() == ""  # nothing to reach

    shown = json.loads(timed(["dvc", "metrics", "show", "--json"], clone))
    (workspace,) = [entry for entry in shown.values() if "data" in entry]
    files = workspace["data"]
    assert files["reports/metrics.json"]["data"] == read_json(repo / "reports/metrics.json")
    assert files["reports/train.json"]["data"] == read_json(repo / "reports/train.json")

    experiments = json.loads(timed(["dvc", "exp", "show", "--json"], clone))
    baseline = next(entry for entry in experiments if entry["rev"] != "workspace")
    metrics = baseline["data"]["metrics"]["reports/metrics.json"]["data"]
    assert metrics == read_json(repo / "reports/metrics.json")
    assert "fusion" in json.dumps(baseline["data"]["params"]["params.yaml"]["data"]["model"])

    assert json.loads(timed(["dvc", "params", "diff", "--json"], clone)) == {}
    timed(["dvc", "plots", "show"], clone)
    page = (clone / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    assert "window.vegaEmbed=" in page and "cdn.jsdelivr.net" not in page  # offline page
    assert page.count("vegaEmbed('#") == 6  # dvc.yaml's three plots and three stages' files


def test_checkout_restores_every_cached_output(repo):
    for output in (
        "models/classifier.json",
        "tuning/hyperparams.json",
        "data/processed/frames.npz",
    ):
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
    """Evaluate re-runs too once train has produced a new model (see the queued experiments)."""
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
    assert run(["git", "status", "--porcelain"], repo).stdout == ""  # the reports too


# --- queued experiments ------------------------------------------------------------------


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


def experiments_shown(repo: Path) -> dict[str, dict]:
    """Experiment name → its params and metrics, from `dvc exp show --json`."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    return {
        rev["name"]: rev["data"]
        for baseline in shown
        for experiment in baseline.get("experiments") or []
        for rev in experiment.get("revs") or []
        if rev.get("name")
    }


def test_queued_experiments_are_compared_in_dvc_and_mlflow(repo):
    for name, overrides in SWEEP.items():
        sets = [word for override in overrides for word in ("-S", override)]
        run(["dvc", "exp", "run", "--queue", "-n", name, *sets], repo)
    with queue_worker(repo):
        status = _wait_for_queue(repo, QUEUE_DEADLINE)
    assert "Failed" not in status, run(["dvc", "queue", "logs", "low"], repo, check=False).stdout

    experiments = experiments_shown(repo)
    train = {name: experiments[name]["metrics"]["reports/train.json"]["data"] for name in SWEEP}
    assert {name: metrics["C"] for name, metrics in train.items()} == {
        "low": 0.001,
        "high": 10.0,
        "low-again": 0.001,
    }
    tested = {name: experiments[name]["metrics"]["reports/metrics.json"]["data"] for name in SWEEP}
    assert tested["low-again"] == tested["low"]  # the same model: evaluate did not run again
    params = experiments["high"]["params"]["params.yaml"]["data"]
    assert params["model"]["kind"] == "logreg" and params["linear"]["C_grid"] == [10.0]

    runs = training_runs(repo)
    by_experiment = {r.data.tags["dvc.exp_name"]: r for r in runs}
    assert set(by_experiment) == {"workspace", *SWEEP}
    for name in SWEEP:
        logged = by_experiment[name]
        assert logged.info.run_name == f"{name}:train"
        assert logged.data.params["model.kind"] == "logreg"
        assert logged.data.metrics["C"] == float(logged.data.params["chosen.C"]) == train[name]["C"]
        assert logged.data.metrics["val_uar"] == pytest.approx(train[name]["val_uar"])
        assert logged.data.metrics["test_uar"] == pytest.approx(tested[name]["test"]["uar"])
    again, first = by_experiment["low-again"], by_experiment["low"]
    assert again.data.tags[MODELS_TAG] == first.data.tags[MODELS_TAG]
    assert again.data.tags["ser.test_metrics_from"] == first.info.run_id

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    ran = client.search_runs(
        [client.get_experiment_by_name("ser").experiment_id], "tags.`dvc.exp_name` != 'workspace'"
    )
    assert {r.data.tags["ser.stage"] for r in ran} == {"train"}  # features were not extracted again


def test_make_exp_show_fits_100_columns_with_the_sweep_and_headline_metrics(repo):
    makefile = PROJECT_ROOT / "Makefile"
    command = ["make", "-s", "-f", str(makefile), "-o", "install", "exp-show"]
    table = run(command, repo, project_env(repo) | {"COLUMNS": "100"}).stdout
    lines = table.splitlines()
    assert max(map(len, lines)) <= 100
    header = lines[1].split()
    assert header == [
        "Experiment",
        "val_uar",
        "test.uar",
        "model.kind",
        "linear.C",
        "linear.C_grid",
    ]
    assert "…" not in table  # no column was cut for want of room
    rows = {match[1]: line for line in lines if (match := re.search(r"\[([\w-]+)\]", line))}
    assert set(rows) == set(SWEEP)
    assert "logreg" in rows["high"] and "['10']" in rows["high"]  # DVC prints 10.0 as 10


def test_apply_then_promote_judges_the_applied_model(repo):
    """`ser promote` finds the version by the content of models/, whatever put it there."""
    promoted = {}
    for name in ("high", "low-again"):
        run(["dvc", "exp", "apply", name], repo)
        result = run(["ser", "promote", "--min-uar", "0"], repo)
        version = re.search(r"champion is now version (\d+)", result.stderr)[1]
        client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
        registered = client.get_model_version("ser-emotion", version)
        assert registered.tags[MODELS_TAG] == content_sha256(repo / "models")
        promoted[name] = client.get_run(registered.run_id).data.tags["dvc.exp_name"]
    # low-again's bytes are low's too: the newest version of them with test metrics
    assert promoted == {"high": "high", "low-again": "low-again"}

    assert sorted(p.name for p in (repo / "models").iterdir()) == sorted(
        ["model.joblib", "preprocessing.joblib", "classifier.json", "monitor_reference.parquet"]
    )
    with (repo / "reports/training_curve.csv").open() as handle:
        assert [float(row["C"]) for row in csv.DictReader(handle)] == [0.001]
    assert status(repo) == {}
    clip = next((repo / "data/raw").rglob("*.flac"))
    predicted = run(["ser", "predict", "--json", str(clip)], repo).stdout
    assert json.loads(predicted)["label"] in EMOTIONS


def test_a_fresh_clone_compares_commits_offline(repo, tmp_path):
    run(["git", "commit", "-qam", "low-again: logreg, C 0.001"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)

    changed = json.loads(timed(["dvc", "params", "diff", "HEAD~1", "--json"], clone))
    assert changed["params.yaml"]["model.kind"] == {"old": "fusion", "new": "logreg"}
    compared = json.loads(timed(["dvc", "metrics", "diff", "HEAD~1", "--all", "--json"], clone))
    before = json.loads(run(["git", "show", "HEAD~1:reports/metrics.json"], clone).stdout)
    uar = compared["reports/metrics.json"]["test.uar"]
    assert uar["old"] == before["test"]["uar"]
    assert uar["new"] == read_json(clone / "reports/metrics.json")["test"]["uar"]
    assert compared["reports/train.json"]["C"]["new"] == 0.001
    timed(["dvc", "plots", "diff", "HEAD~1"], clone)
    page = (clone / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    assert "HEAD~1" in page and "workspace" in page
