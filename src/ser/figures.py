"""Figures of evaluation results, written as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ser.ops.atomic import write_with


def plot_confusion(matrix_counts: np.ndarray, labels: list[str], title: str, target: Path) -> None:
    """Row-normalised confusion matrix (recall on the diagonal) with counts, as a PNG."""
    totals = matrix_counts.sum(axis=1, keepdims=True)
    shares = np.divide(
        matrix_counts, totals, out=np.zeros_like(matrix_counts, float), where=totals > 0
    )
    figure, axes = plt.subplots(figsize=(7, 6))
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix_counts):
        colour = "white" if shares[i, j] > 0.5 else "black"
        axes.text(
            j, i, f"{count}\n{shares[i, j]:.0%}", ha="center", va="center", fontsize=8, color=colour
        )
    axes.set(
        xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true"
    )
    axes.set_xticklabels(labels, rotation=45, ha="right")
    axes.set_yticklabels(labels)
    axes.set_title(title)
    figure.tight_layout()
    write_with(target, lambda path: figure.savefig(path, format="png", dpi=120))
    plt.close(figure)


def plot_reliability(curve: pd.DataFrame, title: str, target: Path) -> None:
    """Accuracy against confidence per bin, before and after calibration, as a PNG."""
    figure, axes = plt.subplots(figsize=(6, 5.5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for column, colour in (("uncalibrated", "tab:red"), ("calibrated", "tab:blue")):
        shown = curve.dropna(subset=[column])
        axes.plot(shown["confidence"], shown[column], marker="o", color=colour, label=column)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy")
    axes.legend(loc="upper left")
    axes.set_title(title)
    figure.tight_layout()
    write_with(target, lambda path: figure.savefig(path, format="png", dpi=120))
    plt.close(figure)
