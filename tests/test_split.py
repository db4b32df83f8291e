"""Speaker-independent train / validation / test split."""

from __future__ import annotations

import pandas as pd
import pytest

from ser.config import SplitParams
from ser.split import SPLITS, SplitError, assign_splits


def speakers_frame(males: int, females: int, clips: int = 3, corpus: str = "ravdess"):
    """``clips`` rows per speaker; speaker ids are corpus-qualified."""
    rows = [
        {"speaker": f"{corpus}:{sex[0]}{i:02d}", "corpus": corpus, "sex": sex, "path": f"{i}-{c}"}
        for sex, count in (("male", males), ("female", females))
        for i in range(count)
        for c in range(clips)
    ]
    return pd.DataFrame(rows, columns=["speaker", "corpus", "sex", "path"])


def split_speakers(manifest: pd.DataFrame, splits: pd.Series) -> dict[str, set[str]]:
    return {s: set(manifest.loc[splits == s, "speaker"]) for s in SPLITS}


@pytest.mark.parametrize("seed", [0, 1, 42, 2024])
@pytest.mark.parametrize(("males", "females"), [(2, 1), (2, 3), (4, 4), (7, 6), (12, 12), (30, 3)])
def test_no_speaker_is_in_two_splits(seed, males, females):
    manifest = speakers_frame(males, females)
    splits = assign_splits(manifest, SplitParams(seed=seed))
    assert splits.name == "split"
    assert splits.index.equals(manifest.index)
    assert set(splits) == set(SPLITS)
    groups = split_speakers(manifest, splits)
    assert groups["train"].isdisjoint(groups["val"])
    assert groups["train"].isdisjoint(groups["test"])
    assert groups["val"].isdisjoint(groups["test"])
    assert set().union(*groups.values()) == set(manifest["speaker"])
    assert manifest.assign(split=splits).groupby("speaker")["split"].nunique().eq(1).all()


@pytest.mark.parametrize(
    ("total", "n_val", "n_test"), [(3, 1, 1), (10, 2, 2), (24, 5, 5), (7, 1, 1)]
)
def test_speaker_counts_follow_the_fractions(total, n_val, n_test):
    manifest = speakers_frame(total - total // 2, total // 2)
    groups = split_speakers(manifest, assign_splits(manifest, SplitParams()))
    assert (len(groups["val"]), len(groups["test"])) == (n_val, n_test)
    assert len(groups["train"]) == total - n_val - n_test


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("males", "females"), [(5, 5), (12, 12), (10, 6)])
def test_each_split_has_both_sexes_when_possible(seed, males, females):
    manifest = speakers_frame(males, females)
    splits = assign_splits(manifest, SplitParams(seed=seed))
    for split in SPLITS:
        assert set(manifest.loc[splits == split, "sex"]) == {"male", "female"}, split


@pytest.mark.parametrize("seed", range(5))
def test_each_split_has_every_corpus_when_possible(seed):
    manifest = pd.concat(
        [
            speakers_frame(5, 5, corpus="ravdess"),
            speakers_frame(0, 4, corpus="tess"),
            speakers_frame(4, 0, corpus="savee"),
        ],
        ignore_index=True,
    )
    splits = assign_splits(manifest, SplitParams(seed=seed))
    for split in SPLITS:
        assert set(manifest.loc[splits == split, "corpus"]) == {"ravdess", "tess", "savee"}


def test_same_seed_same_split():
    manifest = speakers_frame(12, 12)
    first = assign_splits(manifest, SplitParams(seed=5))
    assert first.equals(assign_splits(manifest, SplitParams(seed=5)))


def test_row_order_does_not_matter():
    manifest = speakers_frame(6, 6)
    shuffled = manifest.sample(frac=1, random_state=0)
    expected = assign_splits(manifest, SplitParams(seed=5))
    assert assign_splits(shuffled, SplitParams(seed=5)).sort_index().equals(expected)


def test_other_seeds_give_other_splits():
    manifest = speakers_frame(12, 12)
    tests = {
        frozenset(split_speakers(manifest, assign_splits(manifest, SplitParams(seed=s)))["test"])
        for s in range(6)
    }
    assert len(tests) > 1


@pytest.mark.parametrize(
    ("males", "females", "params"),
    [
        (1, 1, SplitParams()),
        (3, 3, SplitParams(val_fraction=0.45, test_fraction=0.45)),
        (0, 0, SplitParams()),
    ],
)
def test_impossible_split_names_the_keys(males, females, params):
    manifest = speakers_frame(males, females)
    with pytest.raises(SplitError) as error:
        assign_splits(manifest, params)
    message = str(error.value)
    assert f"{males + females} speaker(s)" in message
    assert f"split.val_fraction={params.val_fraction}" in message
    assert f"split.test_fraction={params.test_fraction}" in message
