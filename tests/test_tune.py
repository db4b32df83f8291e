"""The Optuna tune stage on tiny synthetic features."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from ser import EMOTIONS, paths, tune
from ser.config import ConfigError, Params, parse_params

N_FEATURES = 24


def write_tiny_features(root: Path, seed: int = 0) -> None:
    """Separable synthetic features: 3 train, 2 val, 2 test speakers x 7 labels x 3 clips."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(EMOTIONS), N_FEATURES))
    rows = []
    for split, speakers in (("train", 3), ("val", 2), ("test", 2)):
        for s in range(speakers):
            for label_index, label in enumerate(EMOTIONS):
                for take in range(3):
                    values = centres[label_index] + rng.normal(0, 0.6, N_FEATURES)
                    rows.append({
                        "path": f"{split}{s}_{label}_{take}.wav", "corpus": "ravdess",
                        "speaker": f"ravdess:{split}{s}", "sex": "male" if s % 2 else "female",
                        "label": label, "intensity": "normal", "split": split,
                        "augmentation": "none",
                        **{f"f{i:02d}": float(v) for i, v in enumerate(values)},
                    })  # fmt: skip
    target = root / paths.FEATURES
    target.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(target, index=False)


def tiny_params(**tune_overrides: object) -> dict:
    tune_section = {
        "enabled": True, "n_trials": 3, "max_epochs": 3, "pruner_warmup_epochs": 1,
        "seed": 5, "timeout_s": 600,
        "space": {"filters_1": [8, 16], "filters_2": [8, 16], "filters_3": [8, 16],
                  "dense_1": [8], "dense_2": [8], "batch_size": [16]},
        **tune_overrides,
    }  # fmt: skip
    return {"train": {"epochs": 3, "early_stopping_patience": 2}, "tune": tune_section}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_tiny_features(tmp_path)
    return tmp_path


def finished(study_storage: str) -> list[optuna.trial.FrozenTrial]:
    summaries = optuna.get_all_study_summaries(study_storage)
    assert len(summaries) == 1
    study = optuna.load_study(study_name=summaries[0].study_name, storage=study_storage)
    return study.get_trials(states=tune.FINISHED)


def test_three_trials_write_best_params_that_train_reads(workspace: Path) -> None:
    from ser.train import chosen_hyperparameters

    params = parse_params(tiny_params())
    chosen = tune.run(params)
    trials = finished("sqlite:///tuning/study/study.db")
    assert len(trials) == 3
    best = max((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert chosen.filters == (
        best.params["filters_1"],
        best.params["filters_2"],
        best.params["filters_3"],
    )
    assert chosen_hyperparameters() == chosen
    assert json.loads(paths.HYPERPARAMS.read_text())["learning_rate"] == pytest.approx(
        best.params["learning_rate"]
    )
    assert len(pd.read_csv(paths.TRIALS)) == 3


def test_objective_sees_only_training_and_validation_speakers(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[set[str]] = []
    real_fit = tune.fit

    def spying_fit(train_rows, val_rows, *args, **kwargs):
        seen.append(set(train_rows["split"]) | set(val_rows["split"]))
        assert set(train_rows["split"]) == {"train"} and set(val_rows["split"]) == {"val"}
        return real_fit(train_rows, val_rows, *args, **kwargs)

    monkeypatch.setattr(tune, "fit", spying_fit)
    tune.run(parse_params(tiny_params(n_trials=2)))
    assert seen and all("test" not in splits for splits in seen)


def test_pruned_trial_is_recorded_as_pruned(workspace: Path) -> None:
    from ser.dataset import load_features, select

    params = parse_params(tiny_params())
    features = load_features(paths.FEATURES)
    objective = tune.make_objective(select(features, "train"), select(features, "val"), params)
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0)
    )
    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED


def test_trials_are_nested_mlflow_runs_with_their_params(workspace: Path) -> None:
    tune.run(parse_params(tiny_params(n_trials=2)))
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ser"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("ser.stage") == "tune")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    for child in children:
        assert child.data.tags["optuna.state"] in {"COMPLETE", "PRUNED"}
        assert {"filters_1", "dropout", "learning_rate", "batch_size"} <= set(child.data.params)
    assert "best_val_uar" in parent.data.metrics


def test_same_seed_gives_the_same_best_trial(workspace: Path) -> None:
    first = tune.run(parse_params(tiny_params(storage="sqlite:///one.db")))
    second = tune.run(parse_params(tiny_params(storage="sqlite:///two.db")))
    assert first == second


def test_disabled_tuning_passes_the_model_section_through(workspace: Path) -> None:
    params = Params()
    assert tune.run(params) == params.model
    assert not Path("tuning/study/study.db").exists()
    assert paths.HYPERPARAMS.as_posix() == "tuning/hyperparams.json"
    assert paths.TRIALS.as_posix() == "tuning/study/trials.csv"
    assert paths.HYPERPARAMS.is_file() and paths.TRIALS.is_file()


def test_a_linear_kind_passes_through_with_its_c(workspace: Path) -> None:
    from ser.train import chosen_hyperparameters

    params = parse_params({"model": {"kind": "logreg", "C": 0.2, "C_grid": []}})
    assert tune.run(params) == params.model
    assert chosen_hyperparameters().kind == "logreg"
    assert chosen_hyperparameters().C == 0.2


@pytest.mark.parametrize("worker", [False, True])
def test_tuning_a_linear_kind_fails_fast_naming_the_key(workspace: Path, worker: bool) -> None:
    params = parse_params(tiny_params() | {"model": {"kind": "linear_svm"}})
    with pytest.raises(ConfigError, match=r"model.kind is 'linear_svm'"):
        if worker:
            tune.run_worker(params, 1, None)
        else:
            tune.run(params)
    assert not paths.STUDY_DIR.exists() and not paths.HYPERPARAMS.exists()


def test_linear_knobs_leave_the_cnn_study_name_alone() -> None:
    base = parse_params(tiny_params())
    other = parse_params(tiny_params() | {"model": {"C": 3.0, "C_grid": [1.0]}})
    assert tune.study_name(base, "features") == tune.study_name(other, "features")
    wider = parse_params(tiny_params() | {"model": {"dropout": 0.5}})
    assert tune.study_name(wider, "features") != tune.study_name(base, "features")


def _tune_command(workspace: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ser.cli",
        "--params",
        str(workspace / "params.yaml"),
        "tune",
        *extra,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.slow
def test_killed_tune_resumes_with_its_finished_trials(workspace: Path) -> None:
    (workspace / "params.yaml").write_text(yaml.safe_dump(tiny_params(n_trials=4, max_epochs=6)))
    storage = "sqlite:///tuning/study/study.db"
    process = subprocess.Popen(_tune_command(workspace), cwd=workspace, env=_env())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(1)
        study_started = Path("tuning/study/study.db").exists() and bool(
            optuna.get_all_study_summaries(storage)
        )
        if study_started and len(finished(storage)) >= 1:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    before = {t.number: t.params for t in finished(storage)}
    assert 1 <= len(before) < 4

    subprocess.run(_tune_command(workspace), cwd=workspace, env=_env(), check=True, timeout=600)
    after = finished(storage)
    assert {t.number: t.params for t in after if t.number in before} == before
    complete_params = [json.dumps(t.params, sort_keys=True) for t in after]
    assert len(complete_params) == len(set(complete_params)), "a finished trial was re-run"
    assert len(after) >= 4 - 1  # the killed trial is failed by heartbeat or counted as running


@pytest.mark.slow
def test_two_workers_share_one_study_budget(workspace: Path) -> None:
    (workspace / "params.yaml").write_text(yaml.safe_dump(tiny_params(n_trials=6, n_jobs=2)))
    subprocess.run(_tune_command(workspace), cwd=workspace, env=_env(), check=True, timeout=900)
    trials = finished("sqlite:///tuning/study/study.db")
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(numbers))), "lost trials"
    assert 6 <= len(trials) <= 7  # MaxTrialsCallback may let each racing worker start one more
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both processes ran trials"


def test_optional_knobs_are_tuned_only_when_given_a_range() -> None:
    base = parse_params({}).model
    fixed = {
        "filters_1": 64, "filters_2": 128, "filters_3": 256, "kernel_size": 3, "pool_size": 2,
        "dense_1": 64, "dense_2": 16, "dropout": 0.3, "learning_rate": 1e-3, "batch_size": 32,
    }  # fmt: skip
    plain = tune.suggest(optuna.trial.FixedTrial(fixed), parse_params({}).tune.space, base)
    assert (plain.input_noise, plain.l2, plain.select_k) == (base.input_noise, base.l2, None)
    space = parse_params(
        {"tune": {"space": {"input_noise": [0, 1], "l2": [1e-4, 1e-2], "select_k": [500, 1000]}}}
    ).tune.space
    trial = optuna.trial.FixedTrial({**fixed, "input_noise": 0.6, "l2": 3e-3, "select_k": 1000})
    tuned = tune.suggest(trial, space, base)
    assert (tuned.input_noise, tuned.l2, tuned.select_k) == (0.6, 3e-3, 1000)


def test_an_l2_range_must_be_positive_for_its_log_scale() -> None:
    with pytest.raises(ConfigError, match=r"tune\.space: Value error, l2 range must be positive"):
        parse_params({"tune": {"space": {"l2": [0, 0.01]}}})
