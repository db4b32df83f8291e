"""The accuracy benchmark: speaker folds never mix, rows follow what their kind reads, and a
tiny grid runs end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import (
    FAST_PARAMS,
    TRAINED_KINDS,
    _merge,
    feature_table,
    kind_params,
    make_params,
    project_env,
    run,
    write_ravdess_corpus,
)

from ser import ORIGINAL
from ser.metrics import expected_calibration_error
from ser.signal.features import feature_names

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from accuracy import (  # noqa: E402
    KINDS,
    FoldResult,
    aggregate,
    bin_sums,
    chance_ece,
    ece_of,
    markdown,
    previous_rows,
    run_fold,
    settings,
    speaker_folds,
)

TINY = {"spectrogram_cnn": {"epochs": 2}, "linear": {"C_grid": [0.01, 1.0]}}
"""Tiny networks and a short C grid on top of conftest's fast params."""


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
    with pytest.raises(ValueError, match="5 speakers cannot fill 5 folds"):
        speaker_folds(manifest, n_folds=5, seed=0)


def test_every_registered_kind_is_benchmarked():
    assert set(KINDS) == set(TRAINED_KINDS)


COMMON = {"split", "audio", "augment", "train"}
CLIP_SECTIONS = {"features", "preprocessing"}


@pytest.mark.parametrize(
    ("kind", "sections"),
    [
        ("spectrogram_cnn", COMMON | {"spectrogram_cnn", "frames"}),
        ("seed_cnn", COMMON | CLIP_SECTIONS | {"seed_cnn"}),
        ("logreg", COMMON | CLIP_SECTIONS | {"linear"}),
        ("linear_svm", COMMON | CLIP_SECTIONS | {"linear"}),
        ("fusion", COMMON | CLIP_SECTIONS | {"fusion", "spectrogram_cnn", "linear", "frames"}),
    ],
)
def test_settings_are_the_sections_a_kind_reads(tmp_path, kind, sections):
    params = make_params()
    measured = settings(params, tmp_path, 5, kind)
    assert (measured["corpus"], measured["folds"]) == (str(tmp_path.resolve()), 5)
    assert set(measured["params"]) == sections
    assert measured["params"]["split"] == {"seed": params.split.seed}
    if "features" in sections:  # the feature set is the row's own; the rest is the machine's
        assert not {"sets", "workers", "cache_dir"} & set(measured["params"]["features"])


def report_of_every_kind(path: Path, params, corpus: Path) -> list[dict]:
    """A report with one row per kind measured with ``params``, and a row of a retired kind."""
    rows = [
        {"features": "seed", "kind": kind, "settings": settings(params, corpus, 5, kind)}
        for kind in KINDS
    ]
    retired = {"features": "seed", "kind": "cnn", "settings": rows[0]["settings"]}
    path.write_text(json.dumps({"rows": [*rows, retired]}))
    return rows


CLIP_KINDS = ["seed_cnn", "logreg", "linear_svm", "fusion"]


@pytest.mark.parametrize(
    ("override", "dropped"),
    [
        ({}, []),
        ({"seed_cnn": {"dropout": 0.2}}, ["seed_cnn"]),
        ({"linear": {"C_grid": [0.1]}}, ["logreg", "linear_svm", "fusion"]),
        ({"spectrogram_cnn": {"epochs": 5}}, ["spectrogram_cnn", "fusion"]),
        ({"fusion": {"weights": [1.0]}}, ["fusion"]),
        ({"frames": {"n_mels": 24}}, ["spectrogram_cnn", "fusion"]),
        ({"features": {"n_mels": 40}}, CLIP_KINDS),
        ({"preprocessing": {"select_k": 10}}, CLIP_KINDS),
        ({"train": {"seed": 1}}, list(KINDS)),
        ({"audio": {"target_dbfs": -23.0}}, list(KINDS)),
        ({"features": {"workers": 3, "cache_dir": "/elsewhere", "sets": ["compare"]}}, []),
        ({"model": {"kind": "logreg"}, "tune": {"n_trials": 3}}, []),
    ],
)
def test_rows_are_kept_while_what_their_kind_reads_is_unchanged(tmp_path, override, dropped):
    report = tmp_path / "accuracy.json"
    rows = report_of_every_kind(report, make_params(), tmp_path)
    kept = previous_rows(report, make_params(override), tmp_path, 5)
    assert kept == [row for row in rows if row["kind"] not in dropped]  # never the retired one


def test_rows_of_another_corpus_or_fold_count_are_dropped(tmp_path):
    report = tmp_path / "accuracy.json"
    report_of_every_kind(report, make_params(), tmp_path)
    assert previous_rows(report, make_params(), tmp_path, 4) == []
    assert previous_rows(report, make_params(), tmp_path / "other", 5) == []
    assert previous_rows(tmp_path / "none.json", make_params(), tmp_path, 5) == []


@pytest.fixture(scope="module")
def fold_table() -> tuple[pd.DataFrame, list[str], list[list[str]]]:
    """Six speakers' rows (each with a noise copy), their clip-feature columns and 3 folds."""
    params = make_params()
    table = feature_table(params, splits={"train": 6})
    speakers = sorted(table["speaker"].unique())
    folds = [speakers[0:2], speakers[2:4], speakers[4:6]]
    return table, feature_names(params.features), folds


@pytest.mark.parametrize(("weight", "member"), [(1.0, "spectrogram_cnn"), (0.0, "logreg")])
def test_the_fusion_row_scores_each_member_alone(fold_table, weight, member):
    table, columns, folds = fold_table
    params = kind_params("fusion", {**TINY, "fusion": {"pooling": "average", "weights": [weight]}})
    result = run_fold(table, columns, folds, 0, "fusion", params)
    assert (result.test_speakers, result.val_speakers) == (folds[0], folds[1])
    assert set(result.members_uar) == {"spectrogram_cnn", "logreg"}
    assert all(0 <= uar <= 1 for uar in result.members_uar.values())
    # all the weight on one member: the fusion scores exactly as that member does alone
    assert result.uar == result.members_uar[member]


def test_other_kinds_have_no_members(fold_table):
    table, columns, folds = fold_table
    result = run_fold(table, columns, folds, 2, "logreg", kind_params("logreg", TINY))
    assert (result.test_speakers, result.val_speakers) == (folds[2], folds[0])
    assert result.members_uar == {}
    assert 0 <= result.uar <= 1 and result.predict_ms_per_clip > 0
    calibration = result.calibration
    test_clips = table[table["speaker"].isin(folds[2]) & (table["augmentation"] == ORIGINAL)]
    assert sum(n for n, _, _ in calibration["bins"]) == len(test_clips)
    assert calibration["temperature"] > 0
    # refit on training + validation rows: the model validation chose is scored too
    assert 0 <= calibration["chosen_uar"] <= 1
    assert sum(n for n, _, _ in calibration["chosen_bins"]) == len(test_clips)


def test_bins_of_folds_add_up_to_the_ece_of_every_clip():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.full(7, 0.5), size=300)
    labels = rng.integers(0, 7, size=300)
    folds = [
        bin_sums(probabilities[:120], labels[:120]),
        bin_sums(probabilities[120:], labels[120:]),
    ]
    every_clip = expected_calibration_error(probabilities, labels)
    assert ece_of(np.sum(folds, axis=0).tolist()) == pytest.approx(every_clip)
    assert ece_of(folds[0]) == pytest.approx(
        expected_calibration_error(probabilities[:120], labels[:120])
    )


@pytest.mark.parametrize(("clips", "expected"), [(100, 0.0399), (400, 0.0199)])
def test_chance_ece_is_the_binomial_spread_of_a_calibrated_bin(clips, expected):
    """One bin of clips at confidence 0.5: E|right - n/2| / n = sqrt(2 / pi) * 0.5 / sqrt(n)."""
    bins = [[0, 0.0, 0.0]] * 5 + [[clips, clips * 0.5, 0.0]] + [[0, 0.0, 0.0]] * 4
    assert chance_ece(bins) == pytest.approx(expected, rel=0.1)


def fold(index: int, uar: float, members: dict[str, float]) -> FoldResult:
    bins = [[0, 0.0, 0.0]] * 7 + [[10, 7.5, 7.0]] + [[0, 0.0, 0.0]] * 2
    calibration = {"temperature": 1.5, "bins_uncalibrated": bins, "bins": bins}
    return FoldResult(
        index, [f"t{index}"], [f"v{index}"], uar, uar, uar, uar, 1.0, 0.5, members, calibration
    )


def test_a_fusion_row_aggregates_and_reports_its_members():
    results = [
        fold(0, 0.6, {"spectrogram_cnn": 0.5, "logreg": 0.4}),
        fold(1, 0.8, {"spectrogram_cnn": 0.7, "logreg": 0.2}),
    ]
    row = aggregate("seed", "fusion", results)
    assert (row["uar_mean"], row["uar_std"]) == pytest.approx((0.7, 0.1))
    assert row["members_uar"] == {
        "spectrogram_cnn": pytest.approx([0.6, 0.1]),
        "logreg": pytest.approx([0.3, 0.1]),
    }
    plain = aggregate("seed", "logreg", [fold(0, 0.5, {}), fold(1, 0.7, {})])
    assert plain["members_uar"] == {}
    table = markdown([row, plain], {"folds": 2})
    assert "| seed | fusion | 70.0 ± 10.0 % |" in table
    assert "fusion on seed: its member spectrogram_cnn alone scored 60.0 ± 10.0 % UAR" in table
    assert "its member logreg alone scored 30.0 ± 10.0 % UAR" in table
    assert "logreg on seed: its member" not in table
    # both folds 0.5 over-confident on 10 clips each: pooled ECE 0.05 over 20 clips
    assert row["calibration"]["ece"] == pytest.approx(0.05)
    assert row["calibration"]["ece_fold_mean"] == pytest.approx(0.05)
    assert "fusion on seed: test ECE 0.050 before, 0.050 after" in table
    assert "over 20 test clips" in table


def test_a_small_grid_runs_end_to_end_on_generated_clips(tmp_path):
    """Two linear kinds: the grid, its folds and its results file are under test, not a
    network (the networks' folds are the fusion row's tests above)."""
    corpus = tmp_path / "corpus"
    write_ravdess_corpus(corpus, actors=6, takes=2)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(_merge(FAST_PARAMS, TINY)))
    out = tmp_path / "result"
    command = [
        sys.executable,
        str(BENCHMARKS / "accuracy.py"),
        "--corpus",
        str(corpus),
        "--params",
        str(params_file),
        "--folds",
        "3",
        "--sets",
        "seed",
        "egemaps",
        "--kinds",
        "logreg",
        "linear_svm",
        "--out",
        str(out),
    ]
    result = run(command, tmp_path, env=project_env(tmp_path))
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["features"], r["kind"]): r for r in report["rows"]}
    assert set(rows) == {(s, k) for s in ("seed", "egemaps") for k in ("logreg", "linear_svm")}
    for row in rows.values():
        assert 0 <= row["uar_mean"] <= 1 and row["predict_ms_per_clip"] > 0
        assert row["members_uar"] == {}
        folds = row["folds"]
        assert len(folds) == 3
        tested = [s for fold in folds for s in fold["test_speakers"]]
        assert len(tested) == len(set(tested)) == 6  # each speaker tested exactly once
        for fold in folds:
            assert not set(fold["val_speakers"]) & set(fold["test_speakers"])
    table = out.with_suffix(".md").read_text()
    assert "| egemaps | logreg |" in table and table in result.stdout + "\n"

    # measuring one pair again keeps the other rows of the grid
    again = [
        *command[: command.index("--sets")],
        "--sets",
        "seed",
        "--kinds",
        "logreg",
        "--out",
        str(out),
    ]
    run(again, tmp_path, env=project_env(tmp_path))
    rerun = json.loads(out.with_suffix(".json").read_text())
    assert [(r["features"], r["kind"]) for r in rerun["rows"]] == [
        ("seed", "logreg"),
        ("seed", "linear_svm"),
        ("egemaps", "logreg"),
        ("egemaps", "linear_svm"),
    ]
    kept = {(r["features"], r["kind"]): r for r in rerun["rows"]}
    assert kept["egemaps", "linear_svm"] == rows["egemaps", "linear_svm"]
    assert kept["seed", "logreg"]["measured"] != rows["seed", "logreg"]["measured"]
