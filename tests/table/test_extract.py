"""Cached, parallel feature extraction of the manifest's clips and their augmented copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_params, tone, write_audio, write_ravdess_corpus

import ser.table.extract
from ser import ORIGINAL
from ser.corpus.manifest import scan
from ser.signal.audio import load_clip
from ser.signal.features import feature_names, logmel_frames
from ser.table.extract import (
    LOGMEL,
    Extracted,
    ExtractionStats,
    Variant,
    cache_key,
    cached_names,
    extract_features,
    variants_for,
)

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


def params_with(cache_dir: Path, frames: dict | None = None, **features):
    return make_params(
        {"features": {"cache_dir": str(cache_dir), **features}, "frames": frames or {}}
    )


def assert_same_frames(left: list[np.ndarray], right: list[np.ndarray]) -> None:
    assert len(left) == len(right)
    for mine, theirs in zip(left, right, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def cached_files(cache_dir: Path) -> dict[Path, int]:
    """Every file of the cache with its modification time (ns)."""
    return {path: path.stat().st_mtime_ns for path in cache_dir.rglob("*.npy")}


def refuse(what: str):
    def compute(*args, **kwargs):
        raise AssertionError(f"{what} computed although cached")

    return compute


def add_clip(manifest: pd.DataFrame, path: Path, split: str = "train") -> pd.DataFrame:
    """The manifest plus one row for ``path`` (described by scan, whatever its content)."""
    rows, _ = scan(path.parent, ["ravdess"])
    row = rows[rows["path"] == path.as_posix()].assign(split=split)
    return pd.concat([manifest, row], ignore_index=True)


def test_extracted_holds_the_table_its_frames_errors_and_stats(manifest, tmp_path):
    params = params_with(tmp_path / "cache")
    extracted = extract_features(manifest, params)
    assert isinstance(extracted, Extracted)
    assert extracted.errors == {}
    assert isinstance(extracted.stats, ExtractionStats)
    n_train = int((manifest["split"] == "train").sum())
    assert len(extracted.table) == len(extracted.frames) == len(manifest) + n_train
    assert extracted.stats.clips == extracted.stats.computed_clips == len(manifest)
    assert extracted.stats.vectors == len(extracted.table)
    assert extracted.stats.seconds > 0
    for frames in extracted.frames:
        assert frames.dtype == np.float32
        assert frames.ndim == 2
        assert 1 <= len(frames) <= params.frames.max_frames
        assert frames.shape[1] == params.frames.n_mels
        assert np.isfinite(frames).all()


def test_each_rows_frames_are_those_of_its_clip(manifest, tmp_path):
    params = params_with(tmp_path / "cache")
    extracted = extract_features(manifest, params)
    originals = extracted.table.index[extracted.table["augmentation"] == ORIGINAL]
    for index in originals:
        signal = load_clip(Path(extracted.table.at[index, "path"]), params.audio)
        expected = logmel_frames(signal, params.audio.sample_rate, params.frames)
        np.testing.assert_array_equal(extracted.frames[index], expected)
    first, second = (extracted.frames[i] for i in originals[:2])
    assert first.shape != second.shape or not np.allclose(first, second), "a mix-up would show"


def test_rerun_is_served_from_the_cache(manifest, tmp_path, monkeypatch):
    params = params_with(tmp_path / "cache")
    first = extract_features(manifest, params)
    assert not first.errors
    assert first.stats.computed_clips == first.stats.clips == len(manifest)
    cached = cached_files(tmp_path / "cache")
    variants = len(first.table)
    assert len(cached) == variants * len(cached_names(params))  # each set, and the frames
    monkeypatch.setattr(ser.table.extract, "set_features", refuse("a vector"))
    monkeypatch.setattr(ser.table.extract, "logmel_frames", refuse("frames"))
    second = extract_features(manifest, params)
    assert second.stats.computed_clips == 0
    assert second.stats.vectors == first.stats.vectors == len(first.table)
    pd.testing.assert_frame_equal(first.table, second.table)
    assert_same_frames(first.frames, second.frames)
    assert cached_files(tmp_path / "cache") == cached


def test_changing_a_frames_knob_recomputes_the_frames_only(manifest, tmp_path, monkeypatch):
    before = extract_features(manifest, params_with(tmp_path / "cache"))
    vectors = cached_files(tmp_path / "cache")
    wider = params_with(tmp_path / "cache", frames={"n_mels": 24})
    monkeypatch.setattr(ser.table.extract, "set_features", refuse("a vector"))
    after = extract_features(manifest, wider)
    assert after.stats.computed_clips == len(manifest)
    pd.testing.assert_frame_equal(before.table, after.table)
    assert {f.shape[1] for f in after.frames} == {24}
    cached = cached_files(tmp_path / "cache")
    assert {path: cached[path] for path in vectors} == vectors, "no cached file rewritten"
    assert len(cached) == len(vectors) + len(after.table)  # one new frames file per row


def test_frames_made_beside_cached_vectors_equal_frames_made_from_scratch(manifest, tmp_path):
    """Augmented copies are made again, identically, when only their frames are missing."""
    extract_features(manifest, params_with(tmp_path / "cache"))
    partial = extract_features(manifest, params_with(tmp_path / "cache", frames={"n_mels": 24}))
    fresh = extract_features(manifest, params_with(tmp_path / "fresh", frames={"n_mels": 24}))
    pd.testing.assert_frame_equal(partial.table, fresh.table)
    assert_same_frames(partial.frames, fresh.frames)


def test_changing_a_feature_knob_recomputes_the_vectors_only(manifest, tmp_path, monkeypatch):
    before = extract_features(manifest, params_with(tmp_path / "cache"))
    monkeypatch.setattr(ser.table.extract, "logmel_frames", refuse("frames"))
    after = extract_features(manifest, params_with(tmp_path / "cache", n_mfcc=20))
    assert after.stats.computed_clips == len(manifest)
    assert "mfcc_19_mean" in after.table.columns
    assert_same_frames(before.frames, after.frames)


def test_a_new_clip_is_the_only_one_extracted(manifest, tmp_path):
    params = params_with(tmp_path / "cache")
    extract_features(manifest, params)
    extra = write_audio(tmp_path / "new" / "03-01-05-01-01-01-05.wav", tone(0.7, 180))
    extracted = extract_features(add_clip(manifest, extra), params)
    assert not extracted.errors
    assert extracted.stats.computed_clips == 1
    rows = extracted.table.index[extracted.table["path"] == extra.as_posix()]
    assert len(rows) == 2  # original + the noise copy
    assert rows.tolist() == [len(extracted.table) - 2, len(extracted.table) - 1]
    assert len(extracted.frames) == len(extracted.table)


def test_table_has_metadata_then_features(manifest, tmp_path):
    params = params_with(tmp_path / "cache")
    table = extract_features(manifest, params).table
    names = feature_names(params.features)
    meta = ["path", "corpus", "speaker", "sex", "label", "intensity", "split", "augmentation"]
    assert list(table.columns) == meta + names
    assert table[names].notna().all().all()
    assert table[names].dtypes.eq(np.float32).all()


def test_augmented_copies_exist_for_training_clips_only(manifest, tmp_path):
    params = params_with(tmp_path / "cache")
    extracted = extract_features(manifest, params)
    table = extracted.table
    copies = table[table["augmentation"] != ORIGINAL]
    assert set(copies["split"]) == {"train"}
    assert set(copies["augmentation"]) == {"noise"}
    n_train = int((manifest["split"] == "train").sum())
    assert len(copies) == n_train
    assert (table["augmentation"] == ORIGINAL).sum() == len(manifest)
    assert len(table) == len(extracted.frames) == len(manifest) + n_train
    for split in ("val", "test"):
        assert set(table.loc[table["split"] == split, "augmentation"]) == {ORIGINAL}


def test_augmentation_is_deterministic_and_changes_vector_and_frames(manifest, tmp_path):
    params = params_with(tmp_path / "a")
    first = extract_features(manifest, params)
    second = extract_features(manifest, params_with(tmp_path / "b"))
    pd.testing.assert_frame_equal(first.table, second.table)
    assert_same_frames(first.frames, second.frames)
    names = feature_names(params.features)
    table = first.table
    for path, rows in table[table["split"] == "train"].groupby("path"):
        original = rows.index[rows["augmentation"] == ORIGINAL][0]
        noisy = rows.index[rows["augmentation"] == "noise"][0]
        assert not np.allclose(table.loc[original, names], table.loc[noisy, names]), path
        mine, copied = first.frames[original], first.frames[noisy]
        assert mine.shape != copied.shape or not np.allclose(mine, copied), path


def test_a_broken_clip_is_reported_and_the_rest_proceeds(manifest, tmp_path):
    params = params_with(tmp_path / "cache")
    folder = tmp_path / "broken"
    truncated = write_audio(folder / "03-01-03-01-01-01-05.flac", tone(1.0))
    truncated.write_bytes(truncated.read_bytes()[:2000])
    silent = write_audio(folder / "03-01-04-01-01-01-05.flac", np.zeros(16_000, np.float32))
    with_broken = add_clip(add_clip(manifest, truncated), silent, split="test")

    extracted = extract_features(with_broken, params)
    errors = extracted.errors
    assert set(errors) == {truncated.as_posix(), silent.as_posix()}
    assert "not readable audio" in errors[truncated.as_posix()]
    assert "silent" in errors[silent.as_posix()]
    assert set(extracted.table["path"]) == set(manifest["path"])
    assert len(extracted.frames) == len(extracted.table)
    assert extracted.stats.computed_clips == len(with_broken)
    again = extract_features(with_broken, params)
    assert again.stats.computed_clips == 2  # failures are never cached
    assert set(again.errors) == set(errors)


def test_two_workers_give_the_same_vectors_and_frames_as_one(manifest, tmp_path):
    serial = extract_features(manifest, params_with(tmp_path / "one", workers=1))
    parallel = extract_features(manifest, params_with(tmp_path / "two", workers=2))
    assert not parallel.errors
    assert parallel.stats.computed_clips == len(manifest)
    pd.testing.assert_frame_equal(serial.table, parallel.table)
    assert_same_frames(serial.frames, parallel.frames)


def test_adding_a_feature_set_reuses_the_cached_sets(manifest, tmp_path, monkeypatch):
    first = extract_features(manifest, params_with(tmp_path / "cache"))
    both = params_with(tmp_path / "cache", sets=["seed", "egemaps"])
    monkeypatch.setattr(ser.table.extract, "logmel_frames", refuse("frames"))
    extracted = extract_features(manifest, both)
    table = extracted.table
    assert not extracted.errors and extracted.stats.computed_clips == len(manifest)
    egemaps = [c for c in table.columns if c.startswith("egemaps.")]
    assert len(egemaps) == 88
    assert table[egemaps].notna().all().all()
    pd.testing.assert_frame_equal(table[first.table.columns], first.table)
    assert_same_frames(extracted.frames, first.frames)
    again = extract_features(manifest, both)
    assert again.stats.computed_clips == 0
    pd.testing.assert_frame_equal(table, again.table)


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
        {"features": {"sample_rate": None}},
    ):
        assert key != cache_key("a" * 64, original, make_params(override), "seed"), override
    compare = cache_key("a" * 64, original, base, "compare")
    full_rate = make_params({"features": {"sample_rate": None}})
    assert compare != cache_key("a" * 64, original, full_rate, "compare")


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


def test_frames_cache_key_depends_on_the_frames_section_not_on_features():
    base = make_params()
    original, noisy = Variant(-1, ()), Variant(0, ("noise",))
    key = cache_key("a" * 64, original, base, LOGMEL)
    assert key not in {cache_key("a" * 64, original, base, s) for s in ("seed", "egemaps")}
    for override in (
        {"frames": {"n_mels": 24}},
        {"frames": {"n_fft": 2048}},
        {"frames": {"win_length": 400}},
        {"frames": {"hop_length": 160}},
        {"frames": {"fmin": 0.0}},
        {"frames": {"fmax": None}},
        {"frames": {"max_frames": 100}},
        {"audio": {"target_dbfs": -23.0}},
    ):
        assert key != cache_key("a" * 64, original, make_params(override), LOGMEL), override
    for override in (
        {"features": {"n_mfcc": 20, "n_mels": 40, "hop_length": 256, "stats": ["mean"]}},
        {"features": {"sets": ["seed", "egemaps"], "speaker_norm": "per_speaker"}},
        {"spectrogram_cnn": {"epochs": 1}, "model": {"kind": "logreg"}},
        {"augment": {"seed": 99}},
    ):
        assert key == cache_key("a" * 64, original, make_params(override), LOGMEL), override
    seed_key = cache_key("a" * 64, original, base, "seed")
    assert seed_key == cache_key(
        "a" * 64, original, make_params({"frames": {"n_mels": 24}}), "seed"
    )
    reseeded = make_params({"augment": {"seed": 99}})
    assert cache_key("a" * 64, noisy, base, LOGMEL) != cache_key("a" * 64, noisy, reseeded, LOGMEL)


def test_cached_names_are_the_sets_then_the_frames():
    params = make_params({"features": {"sets": ["egemaps", "seed"]}})
    assert cached_names(params) == ["egemaps", "seed", LOGMEL]


def test_variants_per_split():
    params = make_params({"augment": {"copies": [["noise"], ["pitch", "stretch"]]}})
    train = variants_for("train", params)
    assert [v.name for v in train] == [ORIGINAL, "noise", "pitch+stretch"]
    assert [v.copy for v in train] == [-1, 0, 1]
    assert [v.name for v in variants_for("val", params)] == [ORIGINAL]
    assert [v.name for v in variants_for("test", params)] == [ORIGINAL]
    no_copies = make_params({"augment": {"copies": []}})
    assert [v.name for v in variants_for("train", no_copies)] == [ORIGINAL]


def training_rows(speakers: int, clips: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "path": f"s{s}/c{c}.wav",
                "speaker": f"ravdess:{s:02d}",
                "sha256": f"{s:02x}{c:02x}" * 32,
            }
            for s in range(speakers)
            for c in range(clips)
        ]
    )


def test_babble_draws_other_training_speakers_and_new_clips_only_displace_choices():
    training = training_rows(speakers=6, clips=10)
    chosen = ser.table.extract.babble_talkers(training)
    for path, rows in chosen.items():
        speaker = training.set_index("path").loc[path, "speaker"]
        assert len(rows) == ser.table.extract.TALKERS_PER_CLIP
        assert speaker not in set(training.iloc[rows]["speaker"])
    newcomer = training_rows(speakers=7, clips=10).tail(10)
    grown = pd.concat([training, newcomer], ignore_index=True)
    again = ser.table.extract.babble_talkers(grown)
    for path, rows in chosen.items():
        before, after = set(training.iloc[rows]["path"]), set(grown.iloc[again[path]]["path"])
        assert after - before <= set(newcomer["path"]), path  # a choice moves to new clips only


def test_a_babble_copy_is_keyed_by_its_talkers():
    params = make_params({"augment": {"copies": [["babble"]]}})
    copy = Variant(0, ("babble",))
    assert cache_key("a" * 64, copy, params, LOGMEL, ("b" * 64,)) != cache_key(
        "a" * 64, copy, params, LOGMEL, ("c" * 64,)
    )
    original = Variant(-1, ())
    assert cache_key("a" * 64, original, params, LOGMEL, ("b" * 64,)) == cache_key(
        "a" * 64, original, params, LOGMEL
    )


def test_a_copy_that_is_no_longer_speech_stands_for_its_original(manifest, tmp_path):
    params = make_params(
        {
            "features": {"cache_dir": str(tmp_path / "cache")},
            "augment": {"copies": [["level"]], "level_db": [-200.0, -200.0]},  # silence
        }
    )
    extracted = extract_features(manifest, params)
    table = extracted.table
    assert not extracted.errors
    for _, rows in table[table["split"] == "train"].groupby("path"):
        original, copy = rows.index
        assert_same_frames([extracted.frames[original]], [extracted.frames[copy]])


def test_babble_copies_mix_in_other_training_speakers(manifest, tmp_path):
    params = make_params(
        {
            "features": {"cache_dir": str(tmp_path / "cache")},
            "augment": {"copies": [["babble"]], "babble_snr_db": [0.0, 0.0]},
        }
    )
    extracted = extract_features(manifest, params)
    table = extracted.table
    assert set(table.loc[table["augmentation"] != ORIGINAL, "augmentation"]) == {"babble"}
    for _, rows in table[table["split"] == "train"].groupby("path"):
        original, copy = rows.index
        assert not np.allclose(extracted.frames[original], extracted.frames[copy])


def test_with_one_training_speaker_a_babble_copy_is_made_without_babble(manifest, tmp_path, caplog):
    one_speaker = manifest[manifest["split"] != "train"].assign(split="train")
    one_speaker = one_speaker[one_speaker["speaker"] == one_speaker["speaker"].iloc[0]]
    params = make_params(
        {
            "features": {"cache_dir": str(tmp_path / "cache")},
            "augment": {"copies": [["babble", "level"]], "level_db": [-20.0, -20.0]},
        }
    )
    extracted = extract_features(one_speaker, params)
    assert not extracted.errors
    assert "no other training speaker to mix in" in caplog.text
    table = extracted.table
    assert (table["augmentation"] != ORIGINAL).sum() == len(one_speaker)
    for _, rows in table.groupby("path"):
        original, copy = rows.index
        assert not np.allclose(extracted.frames[original], extracted.frames[copy])


def test_babble_draws_only_from_the_clips_own_talker_pool():
    training = training_rows(speakers=6, clips=4)
    pools = training["speaker"].map(lambda s: int(s[-2:]) % 2)  # two pools of three speakers
    chosen = ser.table.extract.babble_talkers(training.assign(talker_pool=pools))
    for path, rows in chosen.items():
        pool = pools[training["path"] == path].item()
        assert len(rows) == ser.table.extract.TALKERS_PER_CLIP
        assert set(pools.iloc[rows]) == {pool}
