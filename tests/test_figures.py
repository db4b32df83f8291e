"""Figures of evaluation results."""

from __future__ import annotations

import numpy as np
from conftest import PNG_MAGIC

from ser.figures import plot_confusion


def test_confusion_plot_is_a_png(tmp_path):
    counts = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])  # a label nobody has: no division by 0
    target = tmp_path / "reports" / "confusion.png"
    plot_confusion(counts, ["sad", "angry", "happy"], "title", target)
    assert target.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in target.parent.iterdir()] == ["confusion.png"]
