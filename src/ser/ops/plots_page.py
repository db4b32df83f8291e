"""A page for `dvc plots show` and `dvc plots diff` that renders with no network.

DVC's page loads Vega, Vega-Lite and Vega-Embed from a CDN, so offline it is blank. This
writes DVC's own page with those libraries inlined instead, from the bundle that the
vl-convert-python package ships, to the file ``.dvc/config``'s ``plots.html_template``
names. The page is committed, so `dvc plots show` works right after `git clone`;
``python -m ser.ops.plots_page`` writes it again after an update of vl-convert-python or
dvc-render (``tests/ops/test_plots_page.py`` fails until then).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ser.errors import SerError

log = logging.getLogger(__name__)

VEGA_LITE_VERSION = "5.21"
"""The Vega-Lite inlined: the newest 5.x vl-convert bundles (DVC's templates are v5 specs)."""


class PlotsError(SerError):
    """The page cannot be made or has nowhere to go."""


def offline_page() -> str:
    """DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined in place of its CDN scripts.

    The page keeps DVC's ``{plot_divs}`` and ``{refresh_tag}`` placeholders and drops
    ``{scripts}``, where DVC puts the CDN ``<script src=…>`` tags.
    """
    import vl_convert
    from dvc_render.html import HTML, PAGE_HTML

    scripts = "{" + HTML.SCRIPTS_PLACEHOLDER + "}"
    if scripts not in PAGE_HTML:
        raise PlotsError(
            f"dvc_render's page (dvc_render.html.PAGE_HTML) has no {scripts} to replace"
        )
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    placeholders = [HTML.SCRIPTS_PLACEHOLDER, HTML.PLOTS_PLACEHOLDER, HTML.REFRESH_PLACEHOLDER]
    for marker in ["</script", *("{" + name + "}" for name in placeholders)]:
        if marker in bundle.lower():  # an end tag would close the script; DVC fills placeholders
            raise PlotsError(
                f"vl_convert's JavaScript bundle contains {marker!r}: it cannot be inlined"
            )
    # The bundle sets window.vegaEmbed, .vega and .vegaLite; its other top-level names stay
    # inside the function, clear of the `var spec` each of DVC's plot divs declares. The
    # charset comes first: the bundle has non-ASCII text (the minus sign of axis labels).
    inlined = (
        f'<meta charset="utf-8">\n    <script>\n(function () {{\n{bundle}\n}})();\n    </script>'
    )
    return PAGE_HTML.replace(scripts, inlined)


def configured_page(repo_root: Path) -> Path:
    """The page file the DVC config of ``repo_root`` names (``plots.html_template``)."""
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        name = repo.config.get("plots", {}).get("html_template")
        dvc_dir = Path(repo.dvc_dir)
    if not name:
        raise PlotsError(
            f"{dvc_dir / 'config'} sets no plots.html_template: "
            "`dvc config plots.html_template plots/offline.html` names the page to write"
        )
    return dvc_dir / name  # DVC reads a relative path from .dvc/ (an absolute one as is)


def write_offline_page(repo_root: Path) -> Path:
    """Write ``offline_page()`` where ``repo_root``'s DVC config expects its plots page."""
    from ser.ops.atomic import write_with

    target = configured_page(repo_root)
    page = offline_page()
    write_with(target, lambda path: path.write_text(page, encoding="utf-8"))
    log.info("wrote %s: `dvc plots show` renders offline", target)
    return target


if __name__ == "__main__":  # `python -m ser.ops.plots_page` refreshes the committed page
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_offline_page(Path.cwd())
