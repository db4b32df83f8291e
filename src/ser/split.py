"""Speaker-independent train / validation / test split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ser.config import SplitParams

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """The data cannot be split as params.yaml asks."""


def _interleaved(speakers: pd.DataFrame, rng: np.random.Generator) -> list[str]:
    """Speakers shuffled within each (corpus, sex) group, then spread proportionally.

    Taking any prefix of the result gives every group about its share, so each
    split holds both sexes (and every corpus) wherever there are enough speakers.
    """
    keyed = []
    for _, group in speakers.groupby(["corpus", "sex"], sort=True):
        order = rng.permutation(sorted(group["speaker"]))
        keyed += [((rank + 0.5) / len(order), rng.random(), s) for rank, s in enumerate(order)]
    return [speaker for *_, speaker in sorted(keyed)]


def assign_splits(manifest: pd.DataFrame, params: SplitParams) -> pd.Series:
    """Map each row to "train", "val" or "test" so that no speaker is in two splits."""
    speakers = manifest[["speaker", "corpus", "sex"]].drop_duplicates("speaker")
    total = len(speakers)
    n_test = max(1, round(total * params.test_fraction))
    n_val = max(1, round(total * params.val_fraction))
    if total - n_test - n_val < 1:
        raise SplitError(
            f"split: {total} speaker(s) cannot fill train, val and test "
            f"(split.val_fraction={params.val_fraction}, "
            f"split.test_fraction={params.test_fraction}); at least 3 speakers are needed"
        )
    order = _interleaved(speakers, np.random.default_rng(params.seed))
    split_of = {s: "test" for s in order[:n_test]}
    split_of |= {s: "val" for s in order[n_test : n_test + n_val]}
    split_of |= {s: "train" for s in order[n_test + n_val :]}
    return manifest["speaker"].map(split_of).rename("split")
