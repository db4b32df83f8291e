"""The real `dvc repro` on a tiny generated corpus in a temporary repository."""

from __future__ import annotations

import json

import pytest
from conftest import run


@pytest.mark.slow
def test_dvc_repro_end_to_end(project_repo):
    repo = project_repo()
    run(["dvc", "repro"], repo)
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert 0 <= metrics["test"]["uar"] <= 1
    assert (repo / "models/model.keras").is_file()
    status = run(["dvc", "status"], repo)
    assert "up to date" in status.stdout
