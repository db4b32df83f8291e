"""Every figure in the tables of the README and the benchmark pages comes from a results file
that a script wrote, and the benchmark scripts keep the rows they are not re-measuring."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))

from pipeline_speed import Row, write_results
from serving import kept_rows
from serving import write_results as write_serving_results

RESULTS = [
    *sorted((PROJECT_ROOT / "benchmarks" / "results").glob("*.json")),
    PROJECT_ROOT / "reports" / "metrics.json",  # dvc repro's, committed with dvc.lock
]
PAGES = ("README.md", "docs/benchmarks.md", "docs/serving.md")
FIGURE = re.compile(r"(?<![\w.])\d+\.\d+|(?<![\w.])\d+(?=\s*(?:%|ms\b|s\b))")
"""A measured figure in a table: any decimal, and whole numbers of %, ms or s (counts,
actor numbers and settings are whole numbers without a unit)."""


def leaves(value: object) -> Iterator[float]:
    """Every number in a parsed JSON document."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from leaves(item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield float(value)


def renderings(value: float) -> set[str]:
    """How a page may print ``value``: rounded, or a fraction as a percentage."""
    shown = {format(value, spec) for spec in (".0f", ".1f", ".2f", ".3f", ".3g", ".4g")}
    if 0 <= value <= 1:
        shown |= {f"{100 * value:.0f}", f"{100 * value:.1f}"}
    return shown


def table_figures(page: Path) -> list[str]:
    """The figures in the rows of the page's tables, outside code spans."""
    rows = [line for line in page.read_text().splitlines() if line.startswith("|")]
    rows = [re.sub(r"`[^`]*`", "", row) for row in rows if not re.fullmatch(r"[|\-: ]+", row)]
    return [figure for row in rows for figure in FIGURE.findall(row)]


@pytest.mark.parametrize("page", PAGES)
def test_every_figure_in_a_table_comes_from_a_results_file(page):
    known = {
        shown
        for path in RESULTS
        if path.is_file()
        for value in leaves(json.loads(path.read_text()))
        for shown in renderings(value)
    }
    figures = table_figures(PROJECT_ROOT / page)
    assert figures, f"{page} has no table figures: update PAGES"
    unknown = [figure for figure in figures if figure not in known]
    assert unknown == [], f"{page}: figures that no results file holds (run the benchmark)"


def serving_row(workers: int, clients: int, p50: float) -> dict:
    result = {"model": "models (fusion)", "workers": workers, "clients": clients}
    result |= {"requests": 200, "clips": "50 clips", "p50_ms": p50, "p95_ms": 2 * p50}
    result |= {"requests_per_s": 4.0, "server_start_s": 9.0, "max_ms": 3 * p50}
    machine = {"load_average_start": [1.0, 1.0, 1.0], "load_average_end": [2.0, 1.0, 1.0]}
    return {"machine": machine, "result": result}


def test_a_serving_run_replaces_only_the_row_of_its_own_settings(tmp_path):
    out = tmp_path / "serving"
    write_serving_results(serving_row(2, 4, 300.0), out)
    write_serving_results(serving_row(1, 4, 500.0), out)
    write_serving_results(serving_row(1, 1, 200.0), out)
    text = write_serving_results(serving_row(1, 4, 550.0), out)  # measured again
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["result"]["workers"], r["result"]["clients"]) for r in rows] == [
        (1, 1),
        (1, 4),
        (2, 4),
    ]
    assert [r["result"]["p50_ms"] for r in rows] == [200.0, 550.0, 300.0]
    assert "| models (fusion) | 1 | 4 | 200 | 550 ms | 1100 ms | 4.0 | 9 s | 1.0 to 2.0 |" in text
    assert out.with_suffix(".md").read_text() == text
    assert kept_rows([], serving_row(1, 1, 1.0)) == [serving_row(1, 1, 1.0)]


def test_the_speed_benchmark_writes_its_table_and_numbers(tmp_path):
    rows = [
        Row("dvc repro from scratch, 1188 clips", 456.04, "s", "<= 600"),
        Row("  stage train", 350.5, "s"),
    ]
    text = write_results(rows, {"nproc": 2}, tmp_path / "speed")
    assert "| dvc repro from scratch, 1188 clips | 456 | s | <= 600 |" in text
    assert "| stage train | 350.5 | s |  |" in text
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["machine"] == {"nproc": 2}
    assert [r["value"] for r in saved["results"]] == [456.04, 350.5]
