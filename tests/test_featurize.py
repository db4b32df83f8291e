"""Cached, parallel feature extraction of the manifest's clips and their augmented copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_params, tone, write_audio, write_ravdess_corpus

from ser.features import feature_names
from ser.featurize import ORIGINAL, Variant, cache_key, extract_features, variants_for
from ser.manifest import scan

SPLIT_OF_ACTOR = {
    "ravdess:01": "train",
    "ravdess:02": "train",
    "ravdess:03": "val",
    "ravdess:04": "test",
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """28 clips of 4 speakers (2 train, 1 val, 1 test), with a split column."""
    root = tmp_path_factory.mktemp("raw")
    write_ravdess_corpus(root, actors=4, takes=1)
    rows, problems = scan(root, ["ravdess"])
    assert not problems
    return rows.assign(split=rows["speaker"].map(SPLIT_OF_ACTOR))


def params_with(cache_dir: Path, **features):
    return make_params({"features": {"cache_dir": str(cache_dir), **features}})


def add_clip(manifest: pd.DataFrame, path: Path, split: str = "train") -> pd.DataFrame:
    """The manifest plus one row for ``path`` (described by scan, whatever its content)."""
    rows, _ = scan(path.parent, ["ravdess"])
    row = rows[rows["path"] == path.as_posix()].assign(split=split)
    return pd.concat([manifest, row], ignore_index=True)


def test_rerun_is_served_from_the_cache(manifest, tmp_path):
    params = params_with(tmp_path / "cache")
    first, errors, stats = extract_features(manifest, params)
    assert not errors
    assert stats.computed_clips == stats.clips == len(manifest)
    second, _, again = extract_features(manifest, params)
    assert again.computed_clips == 0
    assert again.vectors == stats.vectors == len(first)
    pd.testing.assert_frame_equal(first, second)


def test_a_new_clip_is_the_only_one_extracted(manifest, tmp_path):
    params = params_with(tmp_path / "cache")
    extract_features(manifest, params)
    extra = write_audio(tmp_path / "new" / "03-01-05-01-01-01-05.wav", tone(0.7, 180))
    table, errors, stats = extract_features(add_clip(manifest, extra), params)
    assert not errors
    assert stats.computed_clips == 1
    assert (table["path"] == extra.as_posix()).sum() == 2  # original + the noise copy


def test_table_has_metadata_then_features(manifest, tmp_path):
    params = params_with(tmp_path / "cache")
    table, _, _ = extract_features(manifest, params)
    names = feature_names(params.features)
    meta = ["path", "corpus", "speaker", "sex", "label", "intensity", "split", "augmentation"]
    assert list(table.columns) == meta + names
    assert table[names].notna().all().all()
    assert table[names].dtypes.eq(np.float32).all()


def test_augmented_copies_exist_for_training_clips_only(manifest, tmp_path):
    params = params_with(tmp_path / "cache")
    table, _, _ = extract_features(manifest, params)
    copies = table[table["augmentation"] != ORIGINAL]
    assert set(copies["split"]) == {"train"}
    assert set(copies["augmentation"]) == {"noise"}
    n_train = int((manifest["split"] == "train").sum())
    assert len(copies) == n_train
    assert (table["augmentation"] == ORIGINAL).sum() == len(manifest)
    assert len(table) == len(manifest) + n_train


def test_augmentation_is_deterministic_and_changes_the_vector(manifest, tmp_path):
    params = params_with(tmp_path / "a")
    first, _, _ = extract_features(manifest, params)
    second, _, _ = extract_features(manifest, params_with(tmp_path / "b"))
    pd.testing.assert_frame_equal(first, second)
    names = feature_names(params.features)
    train = first[first["split"] == "train"]
    original = train[train["augmentation"] == ORIGINAL][names].to_numpy()
    noisy = train[train["augmentation"] == "noise"][names].to_numpy()
    assert not np.allclose(original, noisy)


def test_a_broken_clip_is_reported_and_the_rest_proceeds(manifest, tmp_path):
    params = params_with(tmp_path / "cache")
    folder = tmp_path / "broken"
    truncated = write_audio(folder / "03-01-03-01-01-01-05.flac", tone(1.0))
    truncated.write_bytes(truncated.read_bytes()[:2000])
    silent = write_audio(folder / "03-01-04-01-01-01-05.flac", np.zeros(16_000, np.float32))
    with_broken = add_clip(add_clip(manifest, truncated), silent, split="test")

    table, errors, stats = extract_features(with_broken, params)
    assert set(errors) == {truncated.as_posix(), silent.as_posix()}
    assert "not readable audio" in errors[truncated.as_posix()]
    assert "silent" in errors[silent.as_posix()]
    assert set(table["path"]) == set(manifest["path"])
    assert stats.computed_clips == len(with_broken)
    _, errors_again, again = extract_features(with_broken, params)
    assert again.computed_clips == 2  # failures are never cached
    assert set(errors_again) == set(errors)


def test_two_workers_give_the_same_vectors_as_one(manifest, tmp_path):
    serial, _, _ = extract_features(manifest, params_with(tmp_path / "one", workers=1))
    parallel, errors, stats = extract_features(manifest, params_with(tmp_path / "two", workers=2))
    assert not errors
    assert stats.computed_clips == len(manifest)
    pd.testing.assert_frame_equal(serial, parallel)


def test_adding_a_feature_set_reuses_the_cached_sets(manifest, tmp_path):
    extract_features(manifest, params_with(tmp_path / "cache"))
    both = params_with(tmp_path / "cache", sets=["seed", "egemaps"])
    table, errors, stats = extract_features(manifest, both)
    assert not errors and stats.computed_clips == len(manifest)
    egemaps = [c for c in table.columns if c.startswith("egemaps.")]
    assert len(egemaps) == 88
    assert table[egemaps].notna().all().all()
    again, _, stats = extract_features(manifest, both)
    assert stats.computed_clips == 0
    pd.testing.assert_frame_equal(table, again)


def test_changing_a_feature_knob_recomputes(manifest, tmp_path):
    extract_features(manifest, params_with(tmp_path / "cache"))
    table, _, stats = extract_features(manifest, params_with(tmp_path / "cache", n_mfcc=20))
    assert stats.computed_clips == len(manifest)
    assert "mfcc_19_mean" in table.columns


def test_cache_key_covers_what_shapes_the_vector():
    base = make_params()
    original, noisy = Variant(-1, ()), Variant(0, ("noise",))
    key = cache_key("a" * 64, original, base, "seed")
    assert key == cache_key("a" * 64, original, base, "seed")
    assert key != cache_key("b" * 64, original, base, "seed")
    assert key != cache_key("a" * 64, noisy, base, "seed")
    assert cache_key("a" * 64, noisy, base, "seed") != cache_key(
        "a" * 64, Variant(1, ("noise",)), base, "seed"
    )
    for override in (
        {"audio": {"target_dbfs": -23.0}},
        {"audio": {"sample_rate": 22_050}},
        {"features": {"hop_length": 256}},
        {"features": {"stats": ["mean"]}},
    ):
        assert key != cache_key("a" * 64, original, make_params(override), "seed"), override


def test_cache_key_ignores_what_does_not():
    base = make_params()
    original, noisy = Variant(-1, ()), Variant(0, ("noise",))
    moved = make_params({"features": {"workers": 4, "cache_dir": "/elsewhere"}})
    assert cache_key("a" * 64, original, base, "seed") == cache_key(
        "a" * 64, original, moved, "seed"
    )
    reseeded = make_params({"augment": {"seed": 99}})
    assert cache_key("a" * 64, original, base, "seed") == cache_key(
        "a" * 64, original, reseeded, "seed"
    )
    assert cache_key("a" * 64, noisy, base, "seed") != cache_key("a" * 64, noisy, reseeded, "seed")
    other_sets = make_params(
        {"features": {"sets": ["seed", "egemaps"], "speaker_norm": "per_speaker"}}
    )
    assert cache_key("a" * 64, original, base, "seed") == cache_key(
        "a" * 64, original, other_sets, "seed"
    )
    opensmile_key = cache_key("a" * 64, original, base, "egemaps")
    assert opensmile_key != cache_key("a" * 64, original, base, "seed")
    assert opensmile_key == cache_key(
        "a" * 64, original, make_params({"features": {"n_mfcc": 20}}), "egemaps"
    )


def test_variants_per_split():
    params = make_params({"augment": {"copies": [["noise"], ["pitch", "stretch"]]}})
    train = variants_for("train", params)
    assert [v.name for v in train] == [ORIGINAL, "noise", "pitch+stretch"]
    assert [v.copy for v in train] == [-1, 0, 1]
    assert [v.name for v in variants_for("val", params)] == [ORIGINAL]
    assert [v.name for v in variants_for("test", params)] == [ORIGINAL]
    no_copies = make_params({"augment": {"copies": []}})
    assert [v.name for v in variants_for("train", no_copies)] == [ORIGINAL]
