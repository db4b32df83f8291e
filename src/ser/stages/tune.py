"""tune stage: Optuna search over ``model.kind``'s own space, scored on validation speakers only.

The study lives in ``tune.storage`` (default: SQLite inside the persistent
``tuning/study`` output), so an interrupted search resumes with its finished
trials, and several workers, here or on other machines, can fill one study.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import mlflow
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError, ProgrammingError

from ser import paths
from ser.config import DEFAULT_PARAMS, ConfigError, Params
from ser.corpus.manifest import sha256_of
from ser.models import kind_named
from ser.models.base import FRAMES_INPUT, Kind, section_of
from ser.models.network import PruningCallback
from ser.ops.atomic import write_json, write_with
from ser.ops.tracking import stage_run, use_experiment
from ser.table.store import load_rows, select

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is logged per trial below
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
HEARTBEAT_S = 20
SCHEMA_ATTEMPTS = 5


def tunable_kind(params: Params) -> Kind:
    """``model.kind``, which must have a search space when tuning is enabled."""
    kind = kind_named(params.model.kind)
    if kind.suggest is None:
        raise ConfigError(
            f"tune.enabled: model.kind {kind.name!r} has no Optuna search space (tunable: "
            "seed_cnn, spectrogram_cnn); set tune.enabled=false (linear.C_grid and "
            "the fusion's weights are chosen on validation speakers in train)"
        )
    return kind


def make_objective(
    train_rows: pd.DataFrame, val_rows: pd.DataFrame, params: Params
) -> Callable[[optuna.Trial], float]:
    """Best validation UAR of ``model.kind`` trained with the trial's hyperparameters.

    Only training and validation rows are given to it: the test speakers stay unseen.
    ``tune.max_epochs`` caps the seed CNN's early-stopped training; the spectrogram
    CNN keeps its fixed schedule, which pruning cuts short.
    """
    kind = tunable_kind(params)
    space = section_of(kind, params.tune.space)
    trial_train = params.train.model_copy(update={"epochs": params.tune.max_epochs})
    trial_params = params.model_copy(update={"train": trial_train})

    def objective(trial: optuna.Trial) -> float:
        section = kind.suggest(trial, space, section_of(kind, params))
        sampled = trial_params.model_copy(update={kind.section: section})
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        pruning = PruningCallback(trial)
        try:
            fitted = kind.fit(train_rows, val_rows, sampled, [pruning])
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            raise
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at epoch {pruning.pruned_at}")
        return max(row["val_uar"] for row in fitted.curve)

    return objective


def study_name(params: Params, data_sha256: str) -> str:
    """Same search, data and training set-up → same study; any change starts a new one.

    ``data_sha256`` identifies the data the kind reads (the features, and frames).
    """
    kind = tunable_kind(params)
    spec = {
        "kind": kind.name,
        "space": section_of(kind, params.tune.space).model_dump(mode="json"),
        "base": section_of(kind, params).model_dump(mode="json"),
        "preprocessing": params.preprocessing.model_dump(mode="json"),
        "train": params.train.model_dump(mode="json", exclude={"epochs"}),
        "max_epochs": params.tune.max_epochs,
        "warmup": params.tune.pruner_warmup_epochs,
        "seed": params.tune.seed,
        "features": data_sha256,
    }
    return "ser-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage at ``url`` (``tune.storage``), creating its tables on first use.

    Workers that start together on an empty database race to create the tables; on
    PostgreSQL the losers fail with a duplicate type or table (optuna#1092) and retry
    here, once the winner's tables exist.
    """
    engine_kwargs = None
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    connect = functools.partial(
        optuna.storages.RDBStorage,
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=HEARTBEAT_S,
    )
    for attempt in range(1, SCHEMA_ATTEMPTS):
        try:
            return connect()
        except (IntegrityError, ProgrammingError) as error:
            name = type(error.orig).__name__
            log.info("another worker is creating the study tables (%s); retrying", name)
            time.sleep(0.5 * attempt)
    return connect()


def open_study(params: Params, name: str, worker: int = 0) -> optuna.Study:
    """Create or load the study; stale trials of killed workers are failed by heartbeat."""
    storage = open_storage(params.tune.storage)
    study = optuna.load_study(study_name=name, storage=storage) if _exists(storage, name) else None
    finished = len(study.get_trials(deepcopy=False)) if study else 0
    sampler = optuna.samplers.TPESampler(
        seed=params.tune.seed + 1000 * worker + finished,
        n_startup_trials=max(2, min(10, params.tune.n_trials // 3)),
    )
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=3, n_warmup_steps=params.tune.pruner_warmup_epochs
    )
    return optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )


def _exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def _trial_reporter(budget: int, parent_run_id: str) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Logs progress and records each finished trial as a nested MLflow run."""

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        best = _best(study)
        best_text = f"best {best.value:.3f} (trial {best.number})" if best else "no best yet"
        value = (
            f"val UAR {trial.value:.3f}" if trial.value is not None else trial.state.name.lower()
        )
        error = trial.user_attrs.get("error")
        log.info(
            "trial %d finished (%d of %d): %s, %s%s",
            trial.number,
            done,
            budget,
            value,
            best_text,
            f" — {error}" if error else "",
        )
        with mlflow.start_run(
            run_name=f"trial-{trial.number}", nested=True, parent_run_id=parent_run_id
        ):
            mlflow.log_params(trial.params)
            mlflow.set_tags({"optuna.state": trial.state.name, "optuna.trial": trial.number})
            if error:
                mlflow.set_tag("optuna.error", error[:5000])
            if trial.value is not None:
                mlflow.log_metric("val_uar", trial.value)
            for step, value_at in trial.intermediate_values.items():
                mlflow.log_metric("val_uar_epoch", value_at, step=step)

    return report


def _best(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


def optimise(params: Params, parent_run_id: str, worker: int = 0) -> optuna.Study:
    """Run trials in this process until the study's budget (all workers) is spent."""
    reads_frames = FRAMES_INPUT in tunable_kind(params).inputs
    features = load_rows(with_frames=reads_frames)
    objective = make_objective(
        select(features, "train", with_augmented=True), select(features, "val"), params
    )
    data = [paths.FEATURES, *([paths.FRAMES_FILE] if reads_frames else [])]
    digest = "+".join(sha256_of(path) for path in data)
    study = open_study(params, study_name(params, digest), worker)
    study.optimize(
        objective,
        timeout=params.tune.timeout_s,
        catch=(Exception,),
        callbacks=[
            optuna.study.MaxTrialsCallback(params.tune.n_trials, states=None),
            _trial_reporter(params.tune.n_trials, parent_run_id),
        ],
        n_trials=None if _remaining(study, params) > 0 else 0,
    )
    return study


def _remaining(study: optuna.Study, params: Params) -> int:
    return params.tune.n_trials - len(study.get_trials(deepcopy=False))


def _start_workers(count: int, params_path: Path, parent_run_id: str) -> list[subprocess.Popen]:
    command = [sys.executable, "-m", "ser.cli", "--params", str(params_path), "tune"]
    return [
        subprocess.Popen([*command, "--worker", str(i), "--parent-run-id", parent_run_id])
        for i in range(1, count + 1)
    ]


def _log_study_artifacts(study: optuna.Study) -> None:
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    for name, plot in (
        ("optimization_history", plot_optimization_history),
        ("param_importances", plot_param_importances),
    ):
        try:
            axes = plot(study)
        except (ValueError, RuntimeError) as error:  # e.g. fewer than two complete trials
            log.info("no %s plot: %s", name, error)
            continue
        target = paths.STUDY_DIR / f"{name}.png"
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.tight_layout()
        write_with(target, lambda path, f=figure: f.savefig(path, format="png", dpi=110))
        mlflow.log_artifact(str(target), "tune")


def chosen_hyperparameters(kind: Kind, section: BaseModel) -> dict[str, object]:
    """What train reads: the kind and its section (sampled, or params.yaml's as is)."""
    return {"kind": kind.name, kind.section: section.model_dump(mode="json")}


def run(params: Params, params_path: Path = DEFAULT_PARAMS) -> dict[str, object]:
    """Choose hyperparameters (search, or params.yaml as is) and write them for train.

    With tuning disabled nothing is searched or logged: the study folder holds an empty
    trials table, the same on every run.
    """
    kind = tunable_kind(params) if params.tune.enabled else None  # fail before any output
    paths.STUDY_DIR.mkdir(parents=True, exist_ok=True)
    if kind is None:
        as_is = kind_named(params.model.kind)
        chosen = chosen_hyperparameters(as_is, section_of(as_is, params))
        write_json(paths.HYPERPARAMS, chosen)
        empty = pd.DataFrame(columns=["number", "state", "value"])
        write_with(paths.TRIALS, lambda path: empty.to_csv(path, index=False))
        log.info("tune.enabled is false: %s as in params.yaml", chosen)
        return chosen
    with stage_run("tune", params) as parent:
        workers = _start_workers(params.tune.n_jobs - 1, params_path, parent.info.run_id)
        study = optimise(params, parent.info.run_id)
        failed_workers = [w.args for w in workers if w.wait() != 0]
        if failed_workers:
            log.warning("%d tuning worker(s) failed: %s", len(failed_workers), failed_workers)
        best = _best(study)
        if best is None:
            raise RuntimeError(f"study {study.study_name}: no trial completed")
        best_section = kind.suggest(
            optuna.trial.FixedTrial(best.params),
            section_of(kind, params.tune.space),
            section_of(kind, params),
        )
        chosen = chosen_hyperparameters(kind, best_section)
        trials = study.trials_dataframe()
        mlflow.set_tags({"tune.source": "optuna", "tune.study": study.study_name})
        mlflow.log_metrics({"best_val_uar": best.value, "best_trial": best.number})
        _log_study_artifacts(study)
        write_json(paths.HYPERPARAMS, chosen)
        write_with(paths.TRIALS, lambda path: trials.to_csv(path, index=False))
        mlflow.log_params({f"chosen.{k}": v for k, v in chosen[kind.section].items()})
        mlflow.log_artifact(str(paths.HYPERPARAMS))
        mlflow.log_artifact(str(paths.TRIALS), "tune")
    log.info("hyperparameters written to %s: %s", paths.HYPERPARAMS, chosen)
    return chosen


def run_worker(params: Params, worker: int, parent_run_id: str | None) -> None:
    """An extra worker on the same study (another process or machine); writes no outputs."""
    tunable_kind(params)
    if parent_run_id is not None:
        use_experiment(params.mlflow.experiment)
        optimise(params, parent_run_id, worker)
        return
    with stage_run("tune-worker", params) as run:
        optimise(params, run.info.run_id, worker)
