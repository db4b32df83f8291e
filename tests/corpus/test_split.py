"""Speaker-independent train / validation / test split."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from ser.config import SplitParams
from ser.corpus.split import SPLITS, SplitError, assign_splits, speaker_draw


def speakers_frame(males: int, females: int, clips: int = 3, corpus: str = "ravdess"):
    """``clips`` rows per speaker; speaker ids are corpus-qualified."""
    rows = [
        {"speaker": f"{corpus}:{sex[0]}{i:02d}", "corpus": corpus, "sex": sex, "path": f"{i}-{c}"}
        for sex, count in (("male", males), ("female", females))
        for i in range(count)
        for c in range(clips)
    ]
    return pd.DataFrame(rows, columns=["speaker", "corpus", "sex", "path"])


def ravdess_actors(actors=range(1, 21), clips: int = 2) -> pd.DataFrame:
    """RAVDESS's speaker ids as corpora.py writes them: odd actors male, even female."""
    rows = [
        {
            "speaker": f"ravdess:{actor:02d}",
            "corpus": "ravdess",
            "sex": "male" if actor % 2 else "female",
            "path": f"{actor}-{c}",
        }
        for actor in actors
        for c in range(clips)
    ]
    return pd.DataFrame(rows, columns=["speaker", "corpus", "sex", "path"])


def split_speakers(manifest: pd.DataFrame, splits: pd.Series) -> dict[str, set[str]]:
    return {s: set(manifest.loc[splits == s, "speaker"]) for s in SPLITS}


def speaker_splits(manifest: pd.DataFrame, params: SplitParams) -> dict[str, str]:
    splits = assign_splits(manifest, params)
    return dict(zip(manifest["speaker"], splits, strict=True))


def drawn_split(speaker: str, params: SplitParams) -> str:
    """Where the speaker's own draw puts it, before any tiny-corpus fallback."""
    draw = speaker_draw(speaker, params.seed)
    if draw < params.test_fraction:
        return "test"
    return "val" if draw < params.test_fraction + params.val_fraction else "train"


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


def test_speaker_draws_are_uniform_in_unit_interval():
    draws = np.array([speaker_draw(f"crema_d:{i}", seed=3) for i in range(4000)])
    assert ((draws >= 0) & (draws < 1)).all()
    assert np.histogram(draws, bins=10, range=(0, 1))[0].min() > 330
    assert speaker_draw("ravdess:01", 3) == speaker_draw("ravdess:01", 3)
    assert speaker_draw("ravdess:01", 3) != speaker_draw("ravdess:01", 4)
    assert speaker_draw("ravdess:01", 3) != speaker_draw("crema_d:01", 3)


def pool_manifest() -> pd.DataFrame:
    """Four corpora, both sexes, enough speakers that every split draws several."""
    return pd.concat(
        [
            ravdess_actors(clips=1),
            speakers_frame(20, 20, clips=1, corpus="crema_d"),
            speakers_frame(0, 2, clips=1, corpus="tess"),
            speakers_frame(4, 0, clips=1, corpus="savee"),
        ],
        ignore_index=True,
    )


@pytest.mark.parametrize("params", [SplitParams(), SplitParams(seed=7, val_fraction=0.1)])
def test_adding_or_removing_speakers_never_moves_another(params):
    pool = pool_manifest()
    full = speaker_splits(pool, params)
    # A split of two or more cannot have been filled by the fallback (it moves one speaker
    # into an empty split), so here every speaker sits where its own draw says.
    assert min(pd.Series(full).value_counts()[list(SPLITS)]) >= 2
    rng = np.random.default_rng(params.seed)
    branches = set()
    for _ in range(300):
        size = int(rng.integers(3, len(pool)))
        subset = pool.iloc[np.sort(rng.choice(len(pool), size=size, replace=False))]
        part = speaker_splits(subset, params)
        expected = {speaker: full[speaker] for speaker in part}
        empty = set(SPLITS) - set(expected.values())
        moved = {speaker for speaker in part if part[speaker] != expected[speaker]}
        # Going from the subset to the pool adds speakers; from the pool to the subset
        # removes them. Either way nobody moves, unless the subset leaves a split empty:
        # then exactly one speaker per empty split is moved into it, and no one else.
        assert len(moved) == len(empty)
        assert {part[speaker] for speaker in moved} == empty
        branches.add(bool(empty))
    assert branches == {False, True}


def test_a_new_ravdess_actor_leaves_the_twenty_in_place():
    before = speaker_splits(ravdess_actors(), SplitParams())
    after = speaker_splits(ravdess_actors(range(1, 25)), SplitParams())
    assert {speaker: after[speaker] for speaker in before} == before


@pytest.mark.parametrize(
    "params",
    [SplitParams(), SplitParams(seed=3, val_fraction=0.1, test_fraction=0.3)],
)
def test_fractions_are_roughly_respected_on_large_corpora(params):
    manifest = speakers_frame(600, 600, clips=1, corpus="crema_d")
    shares = assign_splits(manifest, params).value_counts(normalize=True)
    assert shares["test"] == pytest.approx(params.test_fraction, abs=0.04)
    assert shares["val"] == pytest.approx(params.val_fraction, abs=0.04)
    assert shares["train"] == pytest.approx(
        1 - params.test_fraction - params.val_fraction, abs=0.04
    )


def test_changing_val_fraction_keeps_the_test_speakers():
    manifest = speakers_frame(30, 30)
    tests = {
        frozenset(split_speakers(manifest, assign_splits(manifest, params))["test"])
        for params in (SplitParams(val_fraction=0.1), SplitParams(val_fraction=0.3))
    }
    assert len(tests) == 1


def test_ravdess_actors_get_both_sexes_in_every_split_with_the_default_seed(caplog):
    manifest = ravdess_actors()
    with caplog.at_level(logging.WARNING, logger="ser.corpus.split"):
        splits = assign_splits(manifest, SplitParams())
    for split in SPLITS:
        assert set(manifest.loc[splits == split, "sex"]) == {"male", "female"}, split
    assert not caplog.records


@pytest.mark.parametrize("seed", range(8))
def test_large_corpora_get_both_sexes_in_every_split(seed):
    manifest = speakers_frame(60, 60, corpus="crema_d")
    splits = assign_splits(manifest, SplitParams(seed=seed))
    for split in SPLITS:
        assert set(manifest.loc[splits == split, "sex"]) == {"male", "female"}, split


def test_a_split_without_one_sex_is_logged(caplog):
    manifest = pd.concat(
        [speakers_frame(10, 0), speakers_frame(0, 3, corpus="tess")], ignore_index=True
    )
    # Pick a seed whose draws leave at least one split without the three women.
    seed = next(
        s
        for s in range(100)
        if len({drawn_split(f"tess:f{i:02d}", SplitParams(seed=s)) for i in range(3)}) < 3
        and len({drawn_split(f"ravdess:m{i:02d}", SplitParams(seed=s)) for i in range(10)}) == 3
    )
    with caplog.at_level(logging.WARNING, logger="ser.corpus.split"):
        splits = assign_splits(manifest, SplitParams(seed=seed))
    lacking = [s for s in SPLITS if "female" not in set(manifest.loc[splits == s, "sex"])]
    assert lacking
    assert [r.getMessage() for r in caplog.records] == [
        f"split: {s} has no female speaker with split.seed={seed}; another seed may balance it"
        for s in lacking
    ]


def test_tiny_corpus_fills_empty_splits_with_the_closest_draws():
    params = SplitParams(seed=0)
    candidates = [f"ravdess:{actor:02d}" for actor in range(1, 25)]
    all_train = [s for s in candidates if drawn_split(s, params) == "train"][:3]
    manifest = pd.DataFrame(
        {"speaker": all_train, "corpus": "ravdess", "sex": ["male", "female", "male"]}
    )
    lowest, middle, highest = sorted(all_train, key=lambda s: speaker_draw(s, params.seed))
    # test's interval is [0, 0.2): the lowest draw is closest; val's is [0.2, 0.4) and
    # takes the lowest of the two left.
    assert speaker_splits(manifest, params) == {lowest: "test", middle: "val", highest: "train"}


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("total", [3, 4, 6])
def test_tiny_corpus_moves_one_speaker_per_empty_split(seed, total):
    manifest = speakers_frame(total - total // 2, total // 2)
    params = SplitParams(seed=seed)
    splits = speaker_splits(manifest, params)
    drawn = {speaker: drawn_split(speaker, params) for speaker in splits}
    empty = set(SPLITS) - set(drawn.values())
    moved = {speaker for speaker in splits if splits[speaker] != drawn[speaker]}
    assert set(splits.values()) == set(SPLITS)
    assert len(moved) == len(empty)
    assert {splits[speaker] for speaker in moved} == empty


def test_same_seed_same_split():
    manifest = speakers_frame(12, 12)
    first = assign_splits(manifest, SplitParams(seed=5))
    assert first.equals(assign_splits(manifest, SplitParams(seed=5)))


@pytest.mark.parametrize(("males", "females"), [(6, 6), (2, 1)])
def test_row_order_does_not_matter(males, females):
    manifest = speakers_frame(males, females)
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
