"""The Optuna tune stage: each tunable kind's own search space, on tiny synthetic features."""

from __future__ import annotations

import dataclasses
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
from conftest import (
    TINY_SEED_CNN,
    declared_sections,
    feature_table,
    kind_params,
    make_params,
    sections_read,
    write_feature_files,
)

from ser import EMOTIONS, paths
from ser.config import ConfigError, Params, parse_params
from ser.models import kind_named
from ser.models.base import section_of
from ser.stages import tune
from ser.stages.train import chosen_params
from ser.table.store import load_rows, select, write_frames

N_FEATURES = 24
STORAGE = "sqlite:///tuning/study/study.db"


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
                    rows.append(
                        {
                            "path": f"{split}{s}_{label}_{take}.wav",
                            "corpus": "ravdess",
                            "speaker": f"ravdess:{split}{s}",
                            "sex": "male" if s % 2 else "female",
                            "label": label,
                            "intensity": "normal",
                            "split": split,
                            "augmentation": "none",
                            **{f"f{i:02d}": float(v) for i, v in enumerate(values)},
                        }
                    )
    target = root / paths.FEATURES
    target.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(target, index=False)


TINY_SPACES = {
    "seed_cnn": {
        "filters_1": [8, 16],
        "filters_2": [8, 16],
        "filters_3": [8, 16],
        "dense_1": [8],
        "dense_2": [8],
        "batch_size": [16],
    },
    "spectrogram_cnn": {"base_channels": [4, 8]},
}
"""Search spaces of tiny networks, one per tunable kind."""


def tiny_params(**tune_overrides: object) -> dict:
    """A seed-CNN search over tiny networks (params.yaml as a mapping)."""
    tune_section = {
        "enabled": True,
        "n_trials": 3,
        "max_epochs": 3,
        "pruner_warmup_epochs": 1,
        "seed": 5,
        "timeout_s": 600,
        "space": TINY_SPACES,
        **tune_overrides,
    }
    return {
        "model": {"kind": "seed_cnn"},
        "seed_cnn": TINY_SEED_CNN,
        "train": {"epochs": 3, "early_stopping_patience": 2},
        "tune": tune_section,
    }


TINY_SEARCH = {
    "tune": {"enabled": True, "n_trials": 1, "max_epochs": 2, "space": TINY_SPACES},
    "spectrogram_cnn": {"epochs": 2},
    "train": {"early_stopping_patience": 5},
}
"""One trial of two epochs, for kind_params (either tunable kind)."""


@pytest.fixture
def workspace(mlflow_workspace: Path) -> Path:
    """A working directory with its own MLflow store and the tiny clip-feature table."""
    write_tiny_features(mlflow_workspace)
    return mlflow_workspace


def finished(study_storage: str = STORAGE) -> list[optuna.trial.FrozenTrial]:
    summaries = optuna.get_all_study_summaries(study_storage)
    assert len(summaries) == 1
    study = optuna.load_study(study_name=summaries[0].study_name, storage=study_storage)
    return study.get_trials(states=tune.FINISHED)


def runs_in(workspace: Path) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


def sampled_sections(kind: str, params: Params, trials: int = 25) -> list[tuple[dict, object]]:
    """(trial params, sampled section) of ``trials`` random draws from ``kind``'s space."""
    draws = []

    def objective(trial: optuna.Trial) -> float:
        registered = kind_named(kind)
        space, base = getattr(params.tune.space, kind), getattr(params, kind)
        section = registered.suggest(trial, space, base)
        draws.append((dict(trial.params), section))
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    study.optimize(objective, n_trials=trials)
    return draws


def within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def test_the_spectrogram_cnn_samples_within_its_own_space():
    params = make_params({"spectrogram_cnn": {"channels": [8, 16, 32]}})
    space, base = params.tune.space.spectrogram_cnn, params.spectrogram_cnn
    draws = sampled_sections("spectrogram_cnn", params)
    for trial_params, hp in draws:
        assert set(trial_params) == set(type(space).model_fields)
        first = trial_params["base_channels"]
        assert first in space.base_channels and hp.channels == [first, 2 * first, 4 * first]
        assert within(hp.dropout, space.dropout)
        assert within(hp.learning_rate, space.learning_rate)
        assert within(hp.mixup_alpha, space.mixup_alpha)
        assert within(hp.time_mask_fraction, space.time_mask_fraction)
        assert hp.freq_mask_bands in space.freq_mask_bands
        assert hp.peak_learning_rate >= hp.learning_rate
        assert hp.peak_learning_rate == max(base.peak_learning_rate, hp.learning_rate)
        untouched = {"convs_per_block", "batch_size", "epochs", "weight_decay", "warmup_fraction"}
        assert all(getattr(hp, name) == getattr(base, name) for name in untouched)
    assert len({hp.channels[0] for _, hp in draws}) == len(space.base_channels)


def test_the_seed_cnn_samples_within_its_own_space():
    params = make_params()
    space, base = params.tune.space.seed_cnn, params.seed_cnn
    for trial_params, hp in sampled_sections("seed_cnn", params):
        assert set(trial_params) == set(type(space).model_fields) - {"input_noise", "l2"}
        assert hp.filters[0] in space.filters_1 and hp.filters[1] in space.filters_2
        assert hp.filters[2] in space.filters_3
        assert hp.dense_units[0] in space.dense_1 and hp.dense_units[1] in space.dense_2
        assert hp.kernel_size in space.kernel_size and hp.pool_size in space.pool_size
        assert hp.batch_size in space.batch_size
        assert within(hp.dropout, space.dropout)
        assert within(hp.learning_rate, space.learning_rate)
        assert (hp.input_noise, hp.l2) == (base.input_noise, base.l2)


def test_an_l2_range_must_be_positive_for_its_log_scale() -> None:
    with pytest.raises(
        ConfigError, match=r"tune\.space\.seed_cnn: Value error, l2 range must be positive"
    ):
        parse_params({"tune": {"space": {"seed_cnn": {"l2": [0, 0.01]}}}})


def test_three_trials_write_best_params_that_train_reads(workspace: Path) -> None:
    params = parse_params(tiny_params())
    with sections_read() as read:
        chosen = tune.run(params)
    assert read <= declared_sections("tune")
    trials = finished()
    assert len(trials) == 3
    best = max((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert set(chosen) == {"kind", "seed_cnn"} and chosen["kind"] == "seed_cnn"
    assert chosen["seed_cnn"]["filters"] == [best.params[f"filters_{i}"] for i in (1, 2, 3)]
    assert chosen["seed_cnn"]["learning_rate"] == pytest.approx(best.params["learning_rate"])
    assert json.loads(paths.HYPERPARAMS.read_text()) == chosen
    read = chosen_params(Params(), paths.HYPERPARAMS)  # whatever params.yaml's kind
    assert read.model.kind == "seed_cnn"
    assert read.seed_cnn.model_dump(mode="json") == chosen["seed_cnn"]
    assert len(pd.read_csv(paths.TRIALS)) == 3


def test_objective_sees_only_training_and_validation_speakers(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[set[str], set[str]]] = []
    real = kind_named("seed_cnn")

    def spying_fit(train_rows, val_rows, *args):
        seen.append((set(train_rows["split"]), set(val_rows["split"])))
        return real.fit(train_rows, val_rows, *args)

    spy = dataclasses.replace(real, fit=spying_fit)
    monkeypatch.setattr(tune, "kind_named", lambda name: spy if name == "seed_cnn" else None)
    tune.run(parse_params(tiny_params(n_trials=2)))
    assert seen == [({"train"}, {"val"})] * 2


@pytest.mark.parametrize("kind", ["seed_cnn", "spectrogram_cnn"])
def test_a_trial_scores_its_best_validation_uar_and_can_be_pruned(mlflow_workspace, kind):
    params = kind_params(kind, TINY_SEARCH)
    write_feature_files(feature_table(params))
    features = load_rows(with_frames=kind == "spectrogram_cnn")
    objective = tune.make_objective(select(features, "train"), select(features, "val"), params)
    complete = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    complete.optimize(objective, n_trials=1)
    trial = complete.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2]  # tune.max_epochs / the fixed schedule
    assert trial.value == max(trial.intermediate_values.values())

    pruned = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0)
    )
    pruned.optimize(objective, n_trials=1)
    assert pruned.trials[0].state == optuna.trial.TrialState.PRUNED
    assert list(pruned.trials[0].intermediate_values) == [1]  # stopped after the first epoch


def test_trials_are_nested_mlflow_runs_with_their_params(workspace: Path) -> None:
    tune.run(parse_params(tiny_params(n_trials=2)))
    runs = runs_in(workspace)
    parent = next(r for r in runs if r.data.tags.get("ser.stage") == "tune")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    for child in children:
        assert child.data.tags["optuna.state"] in {"COMPLETE", "PRUNED"}
        assert {"filters_1", "dropout", "learning_rate", "batch_size"} <= set(child.data.params)
    assert "best_val_uar" in parent.data.metrics
    assert parent.data.params["chosen.kernel_size"] in {"3", "5", "7"}


def test_same_seed_gives_the_same_best_trial(workspace: Path) -> None:
    first = tune.run(parse_params(tiny_params(storage="sqlite:///one.db")))
    second = tune.run(parse_params(tiny_params(storage="sqlite:///two.db")))
    assert first == second


def test_a_spectrogram_study_starts_afresh_when_the_frames_change(mlflow_workspace) -> None:
    params = kind_params("spectrogram_cnn", TINY_SEARCH)
    table = feature_table(params)
    write_feature_files(table)
    tune.run(params)
    # the same clip-feature table, other log-mel frames (e.g. another frames.n_mels)
    write_frames(paths.FRAMES_FILE, feature_table(params, seed=1)["logmel"].tolist())
    tune.run(params)
    studies = optuna.get_all_study_summaries(STORAGE)
    assert len(studies) == 2, "trials scored on the old frames were reused"


OWN_SECTION = {
    "spectrogram_cnn": ("spectrogram_cnn", {"dropout": 0.11}),
    "seed_cnn": ("seed_cnn", {"dropout": 0.22}),
    "logreg": ("linear", {"C": 0.5}),
    "linear_svm": ("linear", {"C": 0.25}),
    "fusion": ("fusion", {"weights": [0.7]}),
}
"""Each kind's params section and a value of it that is not the default."""


@pytest.mark.parametrize("kind", list(OWN_SECTION))
def test_disabled_tuning_passes_the_kinds_section_through(mlflow_workspace: Path, kind) -> None:
    section_name, change = OWN_SECTION[kind]
    params = make_params({"model": {"kind": kind}, section_name: change})
    registered = kind_named(kind)
    chosen = tune.run(params)
    section = section_of(registered, params).model_dump(mode="json")
    assert chosen == {"kind": kind, registered.section: section}
    assert json.loads(paths.HYPERPARAMS.read_text()) == chosen
    assert chosen_params(make_params(), paths.HYPERPARAMS) == params
    trials = pd.read_csv(paths.TRIALS)
    assert trials.empty and list(trials.columns) == ["number", "state", "value"]
    assert paths.HYPERPARAMS.as_posix() == "tuning/hyperparams.json"
    assert paths.TRIALS.as_posix() == "tuning/study/trials.csv"
    assert not Path("tuning/study/study.db").exists()
    assert runs_in(mlflow_workspace) == []  # nothing searched, nothing logged
    assert not Path("mlartifacts").exists()


def test_disabled_tuning_writes_the_same_bytes_every_time(mlflow_workspace: Path) -> None:
    outputs = []
    for _ in range(2):
        tune.run(make_params())
        outputs.append((paths.HYPERPARAMS.read_bytes(), paths.TRIALS.read_bytes()))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("kind", ["logreg", "linear_svm", "fusion"])
@pytest.mark.parametrize("worker", [False, True])
def test_tuning_a_kind_without_a_space_fails_naming_the_key(workspace: Path, kind, worker) -> None:
    params = parse_params(tiny_params() | {"model": {"kind": kind}})
    with pytest.raises(ConfigError, match=rf"tune\.enabled: model\.kind '{kind}' has no Optuna"):
        if worker:
            tune.run_worker(params, 1, None)
        else:
            tune.run(params)
    assert not paths.HYPERPARAMS.exists()
    assert runs_in(workspace) == []


def test_tuning_a_kind_without_a_space_leaves_no_study_folder(workspace: Path) -> None:
    params = parse_params(tiny_params() | {"model": {"kind": "logreg"}})
    with pytest.raises(ConfigError):
        tune.run(params)
    assert not paths.STUDY_DIR.exists()


def test_a_study_name_follows_only_what_its_kind_reads() -> None:
    def name(override: dict, kind: str = "seed_cnn") -> str:
        raw = tiny_params() | {"model": {"kind": kind}}
        return tune.study_name(parse_params(raw | override), "features")

    seed = name({})
    assert name({"linear": {"C": 3.0, "C_grid": [1.0]}}) == seed
    assert name({"spectrogram_cnn": {"dropout": 0.1}}) == seed
    assert name({"fusion": {"weights": [1.0]}}) == seed
    assert name({"seed_cnn": {**TINY_SEED_CNN, "dropout": 0.2}}) != seed
    assert tune.study_name(parse_params(tiny_params()), "other features") != seed

    spectrogram = name({}, "spectrogram_cnn")
    assert spectrogram != seed
    assert name({"seed_cnn": {**TINY_SEED_CNN, "dropout": 0.2}}, "spectrogram_cnn") == spectrogram
    assert name({"spectrogram_cnn": {"dropout": 0.1}}, "spectrogram_cnn") != spectrogram


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
    process = subprocess.Popen(_tune_command(workspace), cwd=workspace, env=_env())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(1)
        study_started = Path("tuning/study/study.db").exists() and bool(
            optuna.get_all_study_summaries(STORAGE)
        )
        if study_started and len(finished()) >= 1:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    before = {t.number: t.params for t in finished()}
    assert 1 <= len(before) < 4

    subprocess.run(_tune_command(workspace), cwd=workspace, env=_env(), check=True, timeout=600)
    after = finished()
    assert {t.number: t.params for t in after if t.number in before} == before
    complete_params = [json.dumps(t.params, sort_keys=True) for t in after]
    assert len(complete_params) == len(set(complete_params)), "a finished trial was re-run"
    assert len(after) >= 4 - 1  # the killed trial is failed by heartbeat or counted as running


@pytest.mark.slow
def test_two_workers_share_one_study_budget(workspace: Path) -> None:
    (workspace / "params.yaml").write_text(yaml.safe_dump(tiny_params(n_trials=6, n_jobs=2)))
    subprocess.run(_tune_command(workspace), cwd=workspace, env=_env(), check=True, timeout=900)
    trials = finished()
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(numbers))), "lost trials"
    assert 6 <= len(trials) <= 7  # MaxTrialsCallback may let each racing worker start one more
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both processes ran trials"
