"""The ``ser`` command: bad input fails before any work, with a message naming the cause."""

from __future__ import annotations

import logging

import pytest
import yaml
from conftest import PROJECT_ROOT, project_env, run, tone, write_audio, write_ravdess_corpus

from ser.classifier import Classifier
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


def test_predict_without_a_model_says_so(workspace, caplog):
    clip = write_audio(workspace / "clip.wav", tone(0.5))
    with caplog.at_level(logging.ERROR, logger="ser"):
        assert main(["predict", str(clip), "--model-dir", "models"]) == 2
    assert "no trained model (run the train stage)" in caplog.text


def test_predict_with_two_saved_models_says_which_folder(workspace, caplog, trained_model_dir):
    clip = write_audio(workspace / "clip.wav", tone(0.5))
    models = workspace / "models"
    Classifier.load(trained_model_dir).save(models)
    (models / "model.joblib").write_bytes(b"a stale model")
    with caplog.at_level(logging.ERROR, logger="ser"):
        assert main(["predict", str(clip), "--model-dir", str(models)]) == 2
    assert f"{models}: both model.keras and model.joblib; remove one" in caplog.text


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
