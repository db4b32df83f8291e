"""``ser monitor``: a window like the reference passes, a shifted one is flagged (exit 1),
too few clips give no verdict; the report and summary are written; real traffic through
the served model; the daily ser_monitor DAG."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import yaml
from conftest import PROJECT_ROOT, SHARED_RAVDESS, audio_bytes, make_params, run
from scipy.signal import butter, sosfilt

from ser import EMOTIONS, paths
from ser.config import MonitorParams, SpeechParams
from ser.serve.inference_log import PROBABILITY_COLUMNS, SCHEMA, ParquetSink
from ser.serve.monitor import AUDIO_COLUMNS, judge, monitor
from ser.serve.predict import NO_SPEECH
from ser.signal.audio import resample
from ser.stages import preprocess, train, tune

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))

from serving import ScoringServer, invocation, post
from test_dags import _without_ser_settings, airflow_env, parse_dag

PARAMS = MonitorParams()
END = datetime(2025, 6, 2, tzinfo=UTC)


def clips(count: int, seed: int, **shift: float) -> pd.DataFrame:
    """Log records like RAVDESS speech, with some statistics moved by ``shift``."""
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(len(EMOTIONS)) * 0.7, count)
    frame = pd.DataFrame(
        {
            "time": [END - timedelta(hours=1)] * count,
            "duration": rng.normal(3.7, 0.3, count),
            "sample_rate": np.full(count, 16_000),
            "channels": np.ones(count, int),
            "level_dbfs": rng.normal(-32, 6, count) + shift.get("level_dbfs", 0),
            "clipping_ratio": np.zeros(count),
            "speech_ratio": rng.uniform(0.3, 0.6, count),
            "speech_seconds": rng.uniform(1, 2, count),
            "snr_db": rng.normal(40, 5, count) + shift.get("snr_db", 0),
            "high_band_db": rng.normal(-20, 3, count) + shift.get("high_band_db", 0),
            "label": [EMOTIONS[i] for i in probabilities.argmax(1)],
            "confidence": probabilities.max(1),
            **dict(zip(PROBABILITY_COLUMNS, probabilities.T, strict=True)),
        }
    )
    if "sample_rate" in shift:
        frame["sample_rate"] = int(shift["sample_rate"])
    return frame


def test_a_window_like_the_reference_is_not_flagged():
    verdict, snapshot = judge(clips(240, 0), clips(200, 1), END - timedelta(days=1), END, PARAMS)
    assert verdict.flags == [] and not verdict.drift
    assert snapshot is not None
    assert set(verdict.scores) == {*AUDIO_COLUMNS, "confidence", "label"}
    assert all(score < PARAMS.drift_threshold for score in verdict.scores.values())


def test_noisy_and_telephone_windows_are_flagged():
    reference = clips(240, 0)
    noisy, _ = judge(reference, clips(200, 1, snr_db=-30, level_dbfs=8), END, END, PARAMS)
    assert {"snr_db", "level_dbfs"} <= set(noisy.drifted)
    assert noisy.drift and "of the audio columns drifted" in noisy.flags[0]
    phone, _ = judge(
        reference, clips(200, 2, sample_rate=8_000, high_band_db=-90), END, END, PARAMS
    )
    assert {"sample_rate", "high_band_db"} <= set(phone.drifted) and phone.drift


def test_a_window_of_no_speech_is_flagged_and_refusals_are_counted():
    window = clips(100, 1)
    window.loc[:39, "label"] = NO_SPEECH
    window.loc[40:44, "label"] = "refused"
    verdict, _ = judge(clips(240, 0), window, END, END, PARAMS)
    assert verdict.no_speech_share == pytest.approx(0.4)
    assert verdict.refused_share == pytest.approx(0.05)
    assert any("40% of the clips hold no speech" in flag for flag in verdict.flags)


def test_too_few_clips_give_no_verdict():
    verdict, snapshot = judge(clips(240, 0), clips(5, 1, snr_db=-30), END, END, PARAMS)
    assert snapshot is None and not verdict.drift and verdict.clips == 5


def test_monitor_reads_the_window_of_the_log_and_writes_the_report(tmp_path):
    reference = tmp_path / "reference.parquet"
    clips(240, 0).reindex(columns=SCHEMA.names).to_parquet(reference)
    log = tmp_path / "log"
    shifted = clips(100, 1, snr_db=-30, level_dbfs=8)
    shifted["time"] = END - timedelta(hours=2)
    old = clips(100, 2).assign(time=END - timedelta(days=3))  # outside the window
    ParquetSink(log).write(
        [
            {name: row.get(name) for name in SCHEMA.names}
            for row in pd.concat([shifted, old]).to_dict("records")
        ]
    )
    verdict = monitor(PARAMS, reference, tmp_path / "out", str(log), END)
    assert verdict.clips == 100 and verdict.drift
    summary = json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert summary["drift"] and summary["clips"] == 100 and summary["flags"] == verdict.flags
    assert summary["start"] == (END - timedelta(days=1)).isoformat()
    assert (tmp_path / "out" / "monitor.html").stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="no monitor reference"):
        monitor(PARAMS, tmp_path / "missing.parquet", tmp_path / "out", str(log), END)


# --- generated traffic through the real served model ---------------------------------

needs_ravdess = pytest.mark.skipif(not SHARED_RAVDESS.is_dir(), reason="no shared RAVDESS copy")
PIPELINE = {
    "features": {"sets": ["seed"], "workers": 2},
    "augment": {"copies": []},
    "model": {"kind": "logreg"},
    "linear": {"C_grid": [0.01, 0.1]},
    "speech": SpeechParams().model_dump(),  # the gate on, as deployed
}


def telephone(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """The clip as a phone line carries it: 300-3400 Hz at 8 kHz."""
    band = butter(6, [300, 3400], btype="bandpass", fs=8_000, output="sos")
    return sosfilt(band, resample(samples, rate, 8_000)).astype(np.float32), 8_000


def noisy(samples: np.ndarray, rate: int, snr_db: float = 10.0) -> tuple[np.ndarray, int]:
    """The clip in white noise at ``snr_db`` below the clip's power."""
    power = float(np.mean(samples**2))
    rng = np.random.default_rng(len(samples))
    noise = rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), len(samples))
    return np.clip(samples + noise, -1, 1).astype(np.float32), rate


@pytest.mark.slow
@needs_ravdess
def test_served_traffic_is_judged_against_the_training_data(mlflow_workspace, monkeypatch):
    """A tiny real pipeline (every third RAVDESS clip, logreg on the seed features), served by
    ``mlflow models serve`` with the inference log on; a day of clean clips of the test
    speakers passes, a day of the same clips over a phone line or in 10 dB noise is flagged.
    About three minutes."""
    raw = mlflow_workspace / "data" / "raw" / "ravdess"
    every = sorted(SHARED_RAVDESS.glob("Actor_*/*.flac"))
    for path in every[::3]:
        (raw / path.parent.name).mkdir(parents=True, exist_ok=True)
        (raw / path.parent.name / path.name).symlink_to(path)
    params = make_params(PIPELINE)
    preprocess.run(params)
    tune.run(params)
    train.run(params)
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    test_speakers = {s.split(":")[1] for s in report["splits"]["test"]["speakers"]}
    unseen = [p for p in every if p.stem.split("-")[-1] in test_speakers][1::3][:90]

    log = mlflow_workspace / "inference-log"
    monkeypatch.setenv("SER_INFERENCE_LOG", str(log))
    store = f"sqlite:///{mlflow_workspace / 'mlflow.db'}"
    name = params.mlflow.registered_model
    with ScoringServer(f"models:/{name}/1", store, mlflow_workspace / "server.log") as server:
        verdicts = {}
        for day, change in {"clean": None, "telephone": telephone, "noise": noisy}.items():
            started = datetime.now(UTC)
            for path in unseen:
                samples, rate = soundfile.read(path, dtype="float32")
                if change:
                    samples, rate = change(samples, rate)
                status, text = post(server.url, invocation([audio_bytes(samples, rate)]))
                assert status == 200, text
            ended = datetime.now(UTC)
            time.sleep(3)  # the server's log writer flushes every second
            window = params.monitor.model_copy(
                update={"window_days": (ended - started).total_seconds() / 86_400}
            )
            verdicts[day] = monitor(
                window, paths.MONITOR_REFERENCE, mlflow_workspace / day, str(log), ended
            )
    assert {day: v.clips for day, v in verdicts.items()} == dict.fromkeys(verdicts, len(unseen))
    assert not verdicts["clean"].drift, verdicts["clean"].as_dict()
    assert verdicts["telephone"].drift, verdicts["telephone"].as_dict()
    assert verdicts["noise"].drift, verdicts["noise"].as_dict()


# --- the ser_monitor DAG ---------------------------------------------------------------

DAGS = PROJECT_ROOT / "dags"
DAG_ID = "ser_monitor"


@pytest.fixture
def dag_settings(monkeypatch, tmp_path_factory):
    for key in os.environ.keys() - _without_ser_settings(dict(os.environ)).keys():
        monkeypatch.delenv(key)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path_factory.getbasetemp() / "airflow-parse"))


def load_monitor_dag():
    spec = importlib.util.spec_from_file_location("ser_monitor_under_test", DAGS / "ser_monitor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("dag_settings")
def test_the_monitor_dag_runs_ser_monitor_daily_without_retries():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert parse_dag().dag_id == "ser_pipeline"  # the other DAG parses beside it
    monitor = bag.dags[DAG_ID]
    assert list(monitor.task_dict) == ["monitor"]
    assert monitor.schedule == "@daily" and monitor.catchup is False
    task = monitor.task_dict["monitor"]
    assert task.retries == 0  # drift is a finding: no retry
    assert task.execution_timeout == timedelta(minutes=30)


@pytest.mark.usefixtures("dag_settings")
def test_the_monitor_dag_command_follows_the_settings(monkeypatch, tmp_path):
    module = load_monitor_dag()
    end = datetime(2025, 6, 2, tzinfo=UTC)
    command = module.monitor_command(tmp_path, end)
    assert command == (
        f"export MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/mlflow.db && cd {tmp_path} && "
        "ser monitor --end 2025-06-02T00:00:00+00:00"
    )
    monkeypatch.setenv("SER_INFERENCE_LOG", "postgresql://ser@db/ser")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    command = module.monitor_command(tmp_path, end)
    assert command.startswith("export MLFLOW_TRACKING_URI=http://127.0.0.1:5000 && ")
    assert command.endswith("--log postgresql://ser@db/ser")


def write_day(log: Path, day: datetime, records: pd.DataFrame) -> None:
    records = records.assign(time=day + timedelta(hours=12))
    ParquetSink(log).write(
        [{name: row.get(name) for name in SCHEMA.names} for row in records.to_dict("records")]
    )


def task_state(home: Path) -> str:
    with sqlite3.connect(home / "airflow.db") as db:
        return db.execute(
            "SELECT state FROM task_instance WHERE dag_id = ? ORDER BY start_date DESC LIMIT 1",
            (DAG_ID,),
        ).fetchone()[0]


@pytest.mark.slow
@pytest.mark.usefixtures("dag_settings")
def test_the_monitor_dag_fails_on_a_drifted_day_and_passes_a_usual_one(tmp_path):
    """Two `airflow dags test` runs on a project folder with a reference and a log (~1 min)."""
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    clips(400, 0).reindex(columns=SCHEMA.names).to_parquet(
        project / "models" / "monitor_reference.parquet"
    )
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = tmp_path / "log"
    write_day(log, datetime(2025, 6, 1, tzinfo=UTC), clips(120, 1))
    write_day(log, datetime(2025, 6, 2, tzinfo=UTC), clips(120, 2, snr_db=-30, level_dbfs=8))
    home = tmp_path / "airflow"
    env = airflow_env(
        project,
        home,
        DAGS,
        SER_MONITOR_PROJECT=str(project),
        SER_INFERENCE_LOG=str(log),
        PYTHONPATH=str(PROJECT_ROOT / "src"),  # the project folder holds no code of its own
    )

    usual = run(["airflow", "dags", "test", DAG_ID, "2025-06-02"], project, env, check=False)
    assert usual.returncode == 0, usual.stdout[-3000:] + usual.stderr[-3000:]
    assert task_state(home) == "success"
    drifted = run(["airflow", "dags", "test", DAG_ID, "2025-06-03"], project, env, check=False)
    assert drifted.returncode != 0
    assert task_state(home) == "failed"
    assert "drift: " in drifted.stdout + drifted.stderr
    assert (project / "reports" / "monitor" / "monitor.html").is_file()
