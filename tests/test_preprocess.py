"""The preprocess stage: report of skipped files, and atomic outputs when a later step fails."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_params, tone, write_audio, write_ravdess_corpus

from ser import paths
from ser.manifest import Problem
from ser.preprocess import run, summarise
from ser.split import SplitError

OUTPUTS = (paths.MANIFEST, paths.FEATURES, paths.PREPROCESS_REPORT)


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
    assert {s: len(v["speakers"]) for s, v in report["splits"].items()} == {
        "train": 4,
        "val": 1,
        "test": 1,
    }
    assert report["extraction"]["vectors"] == len(features) == 6 * 7 + 4 * 7  # + noise copies
    assert report["extraction"]["computed_clips"] == 6 * 7 + 1  # the silent clip was tried


def test_rerun_uses_the_feature_cache(workspace):
    params = stage_params(workspace)
    run(params)
    first = paths.FEATURES.read_bytes()
    report = run(params)
    assert report["extraction"]["cached_clips"] == 6 * 7
    assert report["extraction"]["computed_clips"] == 1  # only the failing clip is retried
    assert paths.FEATURES.read_bytes() == first


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
