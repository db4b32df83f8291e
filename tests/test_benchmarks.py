"""The accuracy benchmark: speaker folds never mix, and a tiny grid runs end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import yaml
from conftest import (
    FAST_PARAMS,
    TINY_MODEL,
    _merge,
    make_params,
    project_env,
    run,
    write_ravdess_corpus,
)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from accuracy import previous_rows, settings, speaker_folds  # noqa: E402


def speakers_frame(males: int, females: int) -> pd.DataFrame:
    rows = [("m", "male")] * males + [("f", "female")] * females
    return pd.DataFrame(
        [
            {"speaker": f"ravdess:{tag}{i}", "corpus": "ravdess", "sex": sex}
            for i, (tag, sex) in enumerate(rows)
            for _ in range(3)  # several clips per speaker
        ]
    )


def test_folds_partition_the_speakers_with_both_sexes_in_each():
    manifest = speakers_frame(males=10, females=10)
    folds = speaker_folds(manifest, n_folds=5, seed=42)
    assert sorted(s for fold in folds for s in fold) == sorted(manifest["speaker"].unique())
    assert [len(fold) for fold in folds] == [4] * 5
    sex_of = dict(zip(manifest["speaker"], manifest["sex"], strict=True))
    assert all({sex_of[s] for s in fold} == {"male", "female"} for fold in folds)
    assert folds == speaker_folds(manifest, n_folds=5, seed=42)


def test_too_few_speakers_for_the_folds_is_refused():
    manifest = speakers_frame(males=3, females=2)
    try:
        speaker_folds(manifest, n_folds=5, seed=0)
    except ValueError as error:
        assert "5 speakers cannot fill 5 folds" in str(error)
    else:
        raise AssertionError("five speakers were dealt into five folds plus validation")


def test_a_small_grid_runs_end_to_end_on_generated_clips(tmp_path):
    corpus = tmp_path / "corpus"
    write_ravdess_corpus(corpus, actors=6, takes=2)
    params_file = tmp_path / "params.yaml"
    override = {"model": {**TINY_MODEL, "select_k": 20, "input_noise": 0.1}}
    params_file.write_text(yaml.safe_dump(_merge(FAST_PARAMS, override)))
    out = tmp_path / "result"
    command = [
        sys.executable, str(BENCHMARKS / "accuracy.py"), "--corpus", str(corpus),
        "--params", str(params_file), "--folds", "3", "--sets", "seed", "egemaps",
        "--kinds", "cnn", "logreg", "--out", str(out),
    ]  # fmt: skip
    result = run(command, tmp_path, env=project_env(tmp_path))
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["features"], r["kind"]): r for r in report["rows"]}
    assert set(rows) == {(s, k) for s in ("seed", "egemaps") for k in ("cnn", "logreg")}
    for row in rows.values():
        assert 0 <= row["uar_mean"] <= 1 and row["predict_ms_per_clip"] > 0
        folds = row["folds"]
        assert len(folds) == 3
        tested = [s for fold in folds for s in fold["test_speakers"]]
        assert len(tested) == len(set(tested)) == 6  # each speaker tested exactly once
        for fold in folds:
            assert not set(fold["val_speakers"]) & set(fold["test_speakers"])
    table = out.with_suffix(".md").read_text()
    assert "| egemaps | logreg |" in table and table in result.stdout + "\n"

    # measuring one pair again keeps the other rows of the grid
    again = [*command[:command.index("--sets")], "--sets", "seed", "--kinds", "logreg",
             "--out", str(out)]  # fmt: skip
    run(again, tmp_path, env=project_env(tmp_path))
    rerun = json.loads(out.with_suffix(".json").read_text())
    assert [(r["features"], r["kind"]) for r in rerun["rows"]] == [
        ("seed", "cnn"), ("seed", "logreg"), ("egemaps", "cnn"), ("egemaps", "logreg"),
    ]  # fmt: skip
    kept = {(r["features"], r["kind"]): r for r in rerun["rows"]}
    assert kept["egemaps", "cnn"] == rows["egemaps", "cnn"]
    assert kept["seed", "logreg"]["measured"] != rows["seed", "logreg"]["measured"]


def test_rows_are_kept_while_what_they_depend_on_is_unchanged(tmp_path):
    params = make_params()
    rows = [
        {"features": "seed", "kind": kind, "settings": settings(params, tmp_path, 5, kind)}
        for kind in ("cnn", "logreg")
    ]
    report = tmp_path / "accuracy.json"
    report.write_text(json.dumps({"rows": rows}))
    assert previous_rows(report, params, tmp_path, 5) == rows
    cnn_knob = make_params({"model": {"input_noise": 0.4}})
    assert [r["kind"] for r in previous_rows(report, cnn_knob, tmp_path, 5)] == ["logreg"]
    linear_knob = make_params({"model": {"C_grid": [0.1]}})
    assert [r["kind"] for r in previous_rows(report, linear_knob, tmp_path, 5)] == ["cnn"]
    feature_knob = make_params({"features": {"n_mels": 40}})
    assert previous_rows(report, feature_knob, tmp_path, 5) == []
    assert previous_rows(report, params, tmp_path, 4) == []
