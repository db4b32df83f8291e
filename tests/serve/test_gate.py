"""The one quality gate: the same metric names and verdict for ``ser promote`` and the DAG."""

from __future__ import annotations

import json

import pytest
from conftest import make_params

from ser.serve import gate


def test_scoped_names_are_the_ones_evaluate_logs():
    assert gate.scoped("test", {"uar": 0.5, "accuracy": 0.6}) == {
        "test_uar": 0.5,
        "test_accuracy": 0.6,
    }


def test_metrics_json_reads_as_the_same_flat_names(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"test_speaker_normalised": {"uar": 0.4, "clips": 10}}))
    assert gate.read_metrics(path) == {
        "test_speaker_normalised_uar": 0.4,
        "test_speaker_normalised_clips": 10,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "cannot read the test metrics"), ("[1]", "expected a mapping"), ("{", "cannot read")],
)
def test_unreadable_metrics_name_the_file(tmp_path, text, message):
    path = tmp_path / "metrics.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(gate.NoTestMetrics, match=f"{path}: {message}"):
        gate.read_metrics(path)


@pytest.mark.parametrize("scope", gate.TEST_SCOPES)
def test_the_gate_passes_at_the_threshold_and_fails_below_it(scope):
    metrics = {f"{scope}_uar": 0.3, "val_uar": 0.9}
    assert gate.judge(metrics, "run 1", 0.3) == (scope, 0.3)
    with pytest.raises(gate.GateFailed, match=rf"run 1: {scope} UAR 0\.3000 is below .* 0\.3001"):
        gate.judge(metrics, "run 1", 0.3001)


def test_without_a_test_uar_there_is_nothing_to_judge():
    with pytest.raises(gate.NoTestMetrics, match=r"run 1 has no test UAR .*evaluate stage"):
        gate.judge({"val_uar": 0.9, "test_uar": "n/a"}, "run 1", 0.1)


def test_the_threshold_is_the_override_else_the_params():
    params = make_params({"quality_gate": {"min_test_uar": 0.4}})
    assert gate.threshold(params) == 0.4
    assert gate.threshold(params, 0.25) == 0.25
