"""The ``ser`` command: bad input fails before any work, with a message naming the cause."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
import soundfile
import yaml
from conftest import (
    FAST_PARAMS,
    PROJECT_ROOT,
    SAMPLE_RATE,
    noise,
    project_env,
    run,
    tone,
    write_audio,
    write_ravdess_corpus,
)

from ser.cli import STAGES, build_parser, main


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty project folder as the working directory, with raw data in place."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    write_ravdess_corpus(tmp_path / "data" / "raw" / "ravdess", actors=2, takes=1)
    return tmp_path


def produced(workspace):
    """Everything a stage could have written."""
    return sorted(
        p.relative_to(workspace).as_posix()
        for p in workspace.rglob("*")
        if p.is_file() and "raw" not in p.parts and p.name != "params.yaml"
    )


@pytest.mark.parametrize("stage", STAGES)
def test_bad_params_fail_before_any_work(workspace, caplog, stage):
    (workspace / "params.yaml").write_text(yaml.safe_dump({"train": {"epoch": 3}}))
    with caplog.at_level(logging.ERROR, logger="ser"):
        assert main([stage]) == 2
    assert "train.epoch: unknown key" in caplog.text
    assert produced(workspace) == []


def test_missing_params_file_is_named(workspace, caplog):
    with caplog.at_level(logging.ERROR, logger="ser"):
        assert main(["--params", "other.yaml", "preprocess"]) == 2
    assert "other.yaml: cannot read" in caplog.text


def test_console_script_exits_2_naming_the_key(tmp_path):
    (tmp_path / "params.yaml").write_text("split:\n  val_fraction: 0.6\n  test_fraction: 0.5\n")
    result = run(["ser", "train"], tmp_path, env=project_env(PROJECT_ROOT), check=False)
    assert result.returncode == 2
    assert "val_fraction + test_fraction must be < 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_too_few_speakers_fail_with_a_message(workspace, caplog):
    (workspace / "params.yaml").write_text("")
    with caplog.at_level(logging.ERROR, logger="ser"):
        assert main(["preprocess"]) == 2
    assert "2 speaker(s) cannot fill train, val and test" in caplog.text
    assert not (workspace / "data" / "processed").exists()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("trim_top_db", [30.0, None])
def test_preprocess_skips_hostile_files_naming_each(mlflow_workspace, trim_top_db):
    raw = mlflow_workspace / "data" / "raw" / "ravdess"
    write_ravdess_corpus(raw, actors=6, takes=1)
    hostile = raw / "hostile"  # RAVDESS names, statement 02: each would be a new clip
    hostile.mkdir()
    nan, inf = tone(0.8), tone(0.8)
    nan[100], inf[::1000] = np.nan, np.inf
    soundfile.write(hostile / "03-01-03-01-02-01-01.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    soundfile.write(hostile / "03-01-04-01-02-01-02.wav", inf, SAMPLE_RATE, subtype="FLOAT")
    write_audio(hostile / "03-01-05-01-02-01-03.flac", noise(3.0))
    os.mkfifo(hostile / "03-01-06-01-02-01-04.wav")
    write_audio(hostile / "03-01-07-01-02-01-05.wav", np.stack([tone(0.8, 300)] * 6, axis=1))
    params = {**FAST_PARAMS, "audio": {"trim_top_db": trim_top_db, "max_duration": 2.0}}
    (mlflow_workspace / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["preprocess"]) == 0
    report = json.loads((mlflow_workspace / "reports" / "preprocess.json").read_text())
    reasons = {p["path"].rsplit("/", 1)[1]: p["reason"] for p in report["problems"]}
    assert reasons == {
        "03-01-03-01-02-01-01.wav": "non-finite samples (NaN or Inf)",
        "03-01-04-01-02-01-02.wav": "non-finite samples (NaN or Inf)",
        "03-01-05-01-02-01-03.flac": "too long: 3.0 s (audio.max_duration is 2.0 s)",
        "03-01-06-01-02-01-04.wav": "not a regular file",
    }  # and the six-channel file is a clip like any other
    manifest = pd.read_parquet(mlflow_workspace / "data" / "processed" / "manifest.parquet")
    surround = manifest[manifest["path"].str.endswith("hostile/03-01-07-01-02-01-05.wav")]
    assert surround["channels"].tolist() == [6]


def test_predict_without_a_model_says_so(workspace, caplog):
    clip = write_audio(workspace / "clip.wav", tone(0.5))
    with caplog.at_level(logging.ERROR, logger="ser"):
        assert main(["predict", str(clip), "--model-dir", "models"]) == 2
    assert "no trained model (run the train stage)" in caplog.text


def test_predict_with_a_model_of_an_older_version_says_which_folder(workspace, caplog):
    clip = write_audio(workspace / "clip.wav", tone(0.5))
    models = workspace / "models"
    models.mkdir()
    (models / "model.keras").write_bytes(b"saved before classifier.json existed")
    with caplog.at_level(logging.ERROR, logger="ser"):
        assert main(["predict", str(clip), "--model-dir", str(models)]) == 2
    assert f"{models}: saved by an older version of ser" in caplog.text


def test_every_stage_is_a_subcommand():
    parser = build_parser()
    for stage in STAGES:
        assert parser.parse_args([stage]).command == stage
    args = parser.parse_args(["predict", "a.wav", "b", "--json"])
    assert (args.command, [str(p) for p in args.inputs], args.json) == (
        "predict",
        ["a.wav", "b"],
        True,
    )


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err
