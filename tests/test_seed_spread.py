"""The seed-spread benchmark: the pipeline's training over several seeds, each scored on the
test speakers, resumed after an interruption, and started again when the data change."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import yaml
from conftest import feature_table, kind_params, write_feature_files

from ser.ops.atomic import write_json
from ser.stages.tune import chosen_hyperparameters

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from seed_spread import main, previous_seeds, spread  # noqa: E402

TINY_CNN = {"spectrogram_cnn": {"epochs": 2}, "train": {"refit_on_val": False}}


def test_spread_is_the_mean_and_sample_deviation():
    assert spread([0.6, 0.7, 0.8]) == pytest.approx(
        {"mean": 0.7, "sd": 0.1, "min": 0.6, "max": 0.8}
    )
    assert spread([0.5])["sd"] == 0.0


@pytest.fixture
def pipeline_outputs(mlflow_workspace: Path) -> Path:
    """What ``dvc repro`` leaves for a tiny spectrogram CNN: params, hyperparams, features."""
    params = kind_params("spectrogram_cnn", TINY_CNN)
    (mlflow_workspace / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    from ser.models import kind_named

    kind = kind_named("spectrogram_cnn")
    write_json(
        mlflow_workspace / "tuning" / "hyperparams.json",
        chosen_hyperparameters(kind, params.spectrogram_cnn),
    )
    write_feature_files(feature_table(params))
    write_json(mlflow_workspace / "reports" / "metrics.json", {"test": {"uar": 0.5}})
    return mlflow_workspace


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_each_seed_is_trained_once_and_the_spread_reported(pipeline_outputs, caplog):
    out = pipeline_outputs / "spread"
    assert main(["--seeds", "1", "2", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [s["seed"] for s in report["seeds"]] == [1, 2]
    uars = [s["test_uar"] for s in report["seeds"]]
    assert report["test_uar"] == pytest.approx(spread(uars))
    assert all(0 <= u <= 1 for u in uars) and report["seeds"][0] != report["seeds"][1]
    assert report["pipeline"] == {"seed": 42, "test_uar": 0.5}
    eces = [s["test_ece"] for s in report["seeds"]]
    assert report["test_ece"] == pytest.approx(spread(eces))
    assert all(0 <= e <= 1 for e in eces) and all(s["temperature"] > 0 for s in report["seeds"])
    table = out.with_suffix(".md").read_text()
    assert "spectrogram_cnn, test UAR over 2 training seeds" in table
    assert "\n| 1 | " in table and "\n| 2 | " in table

    with caplog.at_level(logging.INFO, logger="benchmark"):
        assert main(["--seeds", "2", "1", "--out", str(out)]) == 0
    assert "seed 1: measured before" in caplog.text and "seed 2: measured before" in caplog.text
    again = json.loads(out.with_suffix(".json").read_text())
    assert [s["seed"] for s in again["seeds"]] == [2, 1]
    assert {s["seed"]: s for s in again["seeds"]} == {s["seed"]: s for s in report["seeds"]}


def test_seeds_measured_with_other_settings_are_dropped(tmp_path, caplog):
    earlier = tmp_path / "spread.json"
    earlier.write_text(json.dumps({"settings": {"data": "old"}, "seeds": [{"seed": 3}]}))
    assert previous_seeds(earlier, {"data": "old"}) == [{"seed": 3}]
    with caplog.at_level(logging.INFO, logger="benchmark"):
        assert previous_seeds(earlier, {"data": "new"}) == []
    assert "measured with other settings, starting again" in caplog.text
    assert previous_seeds(tmp_path / "none.json", {"data": "new"}) == []
