"""The preprocess stage: features and frames of usable clips, a report of skipped files,
and atomic outputs when a later step fails."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import (
    declared_sections,
    make_params,
    sections_read,
    tone,
    write_audio,
    write_ravdess_corpus,
)

from ser import ORIGINAL, paths
from ser.corpus.manifest import Problem
from ser.corpus.split import SplitError
from ser.signal.audio import load_clip
from ser.signal.features import logmel_frames
from ser.stages.preprocess import run, summarise
from ser.table.store import FRAMES_COLUMN, load_features

OUTPUTS = (paths.MANIFEST, paths.FEATURES, paths.FRAMES_FILE, paths.PREPROCESS_REPORT)


def expected_rows(manifest: pd.DataFrame) -> int:
    """One row per usable clip, plus its noise copy for a training clip."""
    return len(manifest) + int((manifest["split"] == "train").sum())


def stage_params(workspace, **override):
    return make_params(
        {
            "data": {"raw_dir": str(workspace / "data" / "raw")},
            "features": {"cache_dir": str(workspace / "cache")},
            **override,
        }
    )


@pytest.fixture
def workspace(mlflow_workspace):
    """Six speakers' clips plus files that must be skipped, each for its own reason."""
    raw = mlflow_workspace / "data" / "raw"
    write_ravdess_corpus(raw / "ravdess", actors=6, takes=1)
    broken = raw / "ravdess" / "broken"
    write_audio(broken / "notes.wav", tone(0.5))
    (broken / "03-01-03-01-01-01-01.wav").write_text("not audio")
    write_audio(broken / "03-01-04-01-01-01-03.wav", np.zeros(16_000, np.float32))
    write_audio(broken / "03-01-05-01-01-01-05.wav", tone(0.5, sample_rate=4_000), 4_000)
    return mlflow_workspace


def test_report_lists_skipped_files_with_reasons(workspace):
    report = run(stage_params(workspace))
    broken = (workspace / "data" / "raw" / "ravdess" / "broken").as_posix()
    reasons = {p["path"].removeprefix(broken + "/"): p["reason"] for p in report["problems"]}
    assert set(reasons) == {
        "notes.wav",
        "03-01-03-01-01-01-01.wav",
        "03-01-04-01-01-01-03.wav",
        "03-01-05-01-01-01-05.wav",
    }
    assert "matches no corpus convention" in reasons["notes.wav"]
    assert "not readable audio" in reasons["03-01-03-01-01-01-01.wav"]
    assert "silent" in reasons["03-01-04-01-01-01-03.wav"]  # found during extraction
    assert "odd sample rate 4000 Hz" in reasons["03-01-05-01-01-01-05.wav"]
    assert report["skipped"] == 4
    assert json.loads(paths.PREPROCESS_REPORT.read_text()) == report


def test_outputs_hold_usable_clips_only(workspace):
    report = run(stage_params(workspace))
    manifest = pd.read_parquet(paths.MANIFEST)
    features = pd.read_parquet(paths.FEATURES)
    assert len(manifest) == report["clips"] == 6 * 7
    assert not manifest["path"].str.contains("broken").any()
    assert set(features["path"]) == set(manifest["path"])
    assert report["speakers"] == 6
    speakers = {s: len(v["speakers"]) for s, v in report["splits"].items()}
    assert set(speakers) == {"train", "val", "test"} and sum(speakers.values()) == 6
    assert {s: v["clips"] for s, v in report["splits"].items()} == {
        s: 7 * n for s, n in speakers.items()
    }
    assert len(features) == expected_rows(manifest) == 6 * 7 + 7 * speakers["train"]
    assert FRAMES_COLUMN not in features.columns


def test_frames_are_written_row_by_row_beside_the_features(workspace):
    params = stage_params(workspace)
    with sections_read() as read:
        run(params)
    assert read <= declared_sections("preprocess")
    rows = load_features(paths.FEATURES, paths.FRAMES_FILE)
    pd.testing.assert_frame_equal(rows.drop(columns=FRAMES_COLUMN), pd.read_parquet(paths.FEATURES))
    assert len(rows) == expected_rows(pd.read_parquet(paths.MANIFEST))
    for frames in rows[FRAMES_COLUMN]:
        assert frames.dtype == np.float32
        assert frames.shape[1] == params.frames.n_mels
        assert 1 <= len(frames) <= params.frames.max_frames
    originals = rows[(rows["augmentation"] == ORIGINAL) & (rows["split"] != "train")]
    assert len(originals) >= 2 * 7
    for row in originals.itertuples():
        signal = load_clip(Path(row.path), params.audio)
        expected = logmel_frames(signal, params.audio.sample_rate, params.frames)
        np.testing.assert_array_equal(getattr(row, FRAMES_COLUMN), expected, err_msg=row.path)


def test_report_holds_no_run_specific_facts(workspace):
    params = stage_params(workspace)
    report = run(params)
    assert set(report) == {"clips", "speakers", "skipped", "splits", "problems"}
    first = paths.PREPROCESS_REPORT.read_bytes()
    again = run(params)  # served from the cache, a second later
    assert again == report
    assert paths.PREPROCESS_REPORT.read_bytes() == first


def test_rerun_uses_the_feature_cache_and_tells_mlflow(workspace):
    params = stage_params(workspace)
    run(params)
    written = {path: path.read_bytes() for path in (paths.FEATURES, paths.FRAMES_FILE)}
    run(params)
    assert {path: path.read_bytes() for path in written} == written
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], order_by=["attribute.start_time ASC"])
    assert [r.data.tags["ser.stage"] for r in runs] == ["preprocess", "preprocess"]
    first, second = (r.data.metrics for r in runs)
    assert (first["extracted_clips"], first["cached_clips"]) == (6 * 7 + 1, 0)
    assert (second["extracted_clips"], second["cached_clips"]) == (1, 6 * 7)  # the silent clip
    assert first["extraction_seconds"] > 0
    assert second["feature_rows"] == expected_rows(pd.read_parquet(paths.MANIFEST))


def test_a_failing_split_leaves_earlier_outputs_intact(workspace):
    run(stage_params(workspace))
    before = {path: path.read_bytes() for path in OUTPUTS}
    impossible = stage_params(workspace, split={"val_fraction": 0.45, "test_fraction": 0.45})
    with pytest.raises(SplitError, match=r"split\.val_fraction=0\.45"):
        run(impossible)
    assert {path: path.read_bytes() for path in OUTPUTS} == before
    leftovers = [p.name for p in paths.MANIFEST.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_no_usable_clip_is_an_error(mlflow_workspace):
    raw = mlflow_workspace / "data" / "raw"
    write_audio(raw / "notes.wav", tone(0.5))
    with pytest.raises(SplitError, match=r"no usable clips \(1 skipped\)"):
        run(stage_params(mlflow_workspace))
    assert not any(path.exists() for path in OUTPUTS)


def test_summary_counts_per_split():
    manifest = pd.DataFrame(
        {
            "speaker": ["a", "a", "b", "c", "c", "c"],
            "sex": ["male", "male", "female", "male", "male", "male"],
            "label": ["sad", "angry", "sad", "sad", "sad", "happy"],
            "split": ["train", "train", "train", "test", "test", "test"],
        }
    )
    summary = summarise(manifest, [Problem("x.wav", "silent")])
    assert (summary["clips"], summary["speakers"], summary["skipped"]) == (6, 3, 1)
    assert summary["splits"]["train"] == {
        "clips": 3,
        "speakers": ["a", "b"],
        "sexes": {"male": 1, "female": 1},
        "labels": {"angry": 1, "sad": 2},
    }
    assert summary["splits"]["test"]["labels"] == {"happy": 1, "sad": 2}
    assert summary["problems"] == [{"path": "x.wav", "reason": "silent"}]
