"""`dvc plots show` with the project's DVC config writes a page that needs no network."""

from __future__ import annotations

import html.parser
import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PROJECT_ROOT, run

from ser import EMOTIONS
from ser.metrics import reliability_curve
from ser.ops.plots_page import PlotsError, configured_page, offline_page

EPOCHS = 6


class _Page(html.parser.HTMLParser):
    """Every tag's attributes, and the text of each script inside a ``<div id=…>``."""

    def __init__(self, text: str):
        super().__init__()
        self.attributes: list[tuple[str, dict[str, str | None]]] = []
        self.div_scripts: dict[str, str] = {}
        self._div: str | None = None
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes.append((tag, dict(attrs)))
        if tag == "div":
            self._div = dict(attrs).get("id")
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False
        if tag == "div":
            self._div = None

    def handle_data(self, data: str) -> None:
        if self._in_script and self._div:
            self.div_scripts[self._div] = self.div_scripts.get(self._div, "") + data


def assert_offline(text: str) -> _Page:
    """The page loads nothing from the network (no script, style or image) and carries Vega-Embed."""
    page = _Page(text)
    remote = [
        (tag, value)
        for tag, attrs in page.attributes
        for name, value in attrs.items()
        if name in ("src", "href", "data")
        and value
        and (urlsplit(value).scheme not in ("", "file", "data") or value.startswith("//"))
    ]
    assert remote == [], f"the page loads {remote}"
    assert "cdn.jsdelivr.net" not in text
    assert "window.vegaEmbed=" in text  # the inlined bundle defines what DVC's divs call
    assert '<meta charset="utf-8">' in text[:1024]  # the bundle has non-ASCII text
    return page


@pytest.fixture(scope="module")
def page() -> str:
    return offline_page()


def test_offline_page_inlines_the_libraries_and_keeps_dvcs_placeholders(page: str) -> None:
    assert_offline(page)
    assert page.count("{plot_divs}") == 1
    assert page.count("{refresh_tag}") == 1
    assert "{scripts}" not in page  # where DVC would put its CDN <script src=…> tags


def _write_reports(repo: Path) -> None:
    """Tiny reports as train and evaluate write them (columns the plots of dvc.yaml read)."""
    epochs = pd.DataFrame({"epoch": range(1, EPOCHS + 1)})
    curve = epochs.assign(
        accuracy=0.2 + 0.1 * epochs.epoch,
        loss=2.0 - 0.2 * epochs.epoch,
        val_uar=0.15 + 0.08 * epochs.epoch,
        learning_rate=0.001,
    )
    (repo / "reports").mkdir()
    curve.to_csv(repo / "reports" / "training_curve.csv", index=False)
    predicted = [*EMOTIONS[1:], EMOTIONS[0]]  # one wrong per label
    pd.DataFrame(
        {
            "path": [f"data/raw/{label}.flac" for label in EMOTIONS * 2],
            "speaker": "ravdess:03",
            "actual": list(EMOTIONS) * 2,
            "predicted": list(EMOTIONS) + predicted,
            "confidence": 0.5,
        }
    ).to_csv(repo / "reports" / "predictions.csv", index=False)
    clips = 8 * len(EMOTIONS)
    confidence = np.linspace(0.15, 0.95, clips)  # the top probability, in bins 0.1 to 1
    others = (1 - confidence) / (len(EMOTIONS) - 1)
    top = np.eye(len(EMOTIONS), dtype=bool)[np.arange(clips) % len(EMOTIONS)]
    probabilities = np.where(top, confidence[:, None], others[:, None])
    labels = np.arange(clips) % 3  # right about one clip in three
    reliability_curve(probabilities**1.5, probabilities, labels).to_csv(
        repo / "reports" / "reliability.csv", index=False
    )


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC repository with this project's dvc.yaml, .gitignore, .dvc/config and plots page,
    and reports."""
    repo = tmp_path_factory.mktemp("plots")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    for name in ("dvc.yaml", ".gitignore", ".dvc/config", ".dvc/plots/offline.html"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, repo / name)
    _write_reports(repo)
    return repo


def _dvc_yaml_plot_ids() -> set[str]:
    """The HTML id DVC gives each plot of dvc.yaml: top-level ones and each stage's."""
    from dvc_render.base import Renderer

    pipeline = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    entries = list(pipeline.get("plots", []))
    for stage in pipeline["stages"].values():
        entries += stage.get("plots", [])
    names = [next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries]
    return {Renderer.remove_special_chars(name) for name in names}


def test_dvc_plots_show_draws_every_plot_with_no_network(plots_repo: Path) -> None:
    import vl_convert

    run(["dvc", "plots", "show"], plots_repo)  # with the committed page, as a fresh clone has it

    page = assert_offline((plots_repo / "dvc_plots" / "index.html").read_text(encoding="utf-8"))
    assert set(page.div_scripts) == _dvc_yaml_plot_ids()
    for plot_id, script in page.div_scripts.items():
        spec = json.loads(
            re.fullmatch(r"\s*var spec = (.*);\s*vegaEmbed\(.*\);\s*", script, re.S)[1]
        )
        svg = vl_convert.vegalite_to_svg(spec)  # the Vega-Lite and Vega the page inlines
        lines = re.findall(r'aria-roledescription="line mark" d="([^"]+)"', svg)
        cells = svg.count('aria-roledescription="rect mark"')
        if plot_id == "reports_predictions_csv":  # the confusion matrix: a cell per pair
            assert cells >= 2 * len(EMOTIONS), plot_id
        elif "eliability" in plot_id:  # a vertex per confidence bin with clips in it
            assert lines and all(line.count(",") >= 9 for line in lines), plot_id
        else:  # a training curve: one vertex per epoch
            assert lines and all(line.count(",") == EPOCHS for line in lines), plot_id


def test_the_committed_page_is_the_one_the_installed_packages_make(page: str) -> None:
    """A fresh clone's `dvc plots show` needs the page: it is committed, not built."""
    committed = configured_page(PROJECT_ROOT)
    assert committed.read_text(encoding="utf-8") == page, (
        f"{committed} is stale: run `python -m ser.ops.plots_page` and commit it"
    )
    tracked = run(["git", "ls-files", "--error-unmatch", str(committed)], PROJECT_ROOT, check=False)
    assert tracked.returncode == 0, f"{committed} is not committed"


def test_dvc_plots_output_is_not_tracked_by_git(plots_repo: Path) -> None:
    ignored = run(["git", "check-ignore", "-q", "dvc_plots/index.html"], plots_repo, check=False)
    assert ignored.returncode == 0, "dvc_plots/ is not git-ignored"


def test_a_dvc_config_without_html_template_is_named(tmp_path: Path) -> None:
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    with pytest.raises(PlotsError, match=r"\.dvc/config sets no plots\.html_template"):
        configured_page(tmp_path)
