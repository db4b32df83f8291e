"""The manifest: one row per usable clip; every skipped file reported with its reason."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from conftest import SAMPLE_RATE, tone, write_audio, write_ravdess_corpus

from ser.config import AudioParams
from ser.corpus.manifest import MANIFEST_COLUMNS, Problem, describe_clip, scan, sha256_of
from ser.signal.audio import load_clip

ALL = ["ravdess", "crema_d", "tess", "savee"]


def test_rows_describe_each_clip(tmp_path):
    paths = write_ravdess_corpus(tmp_path / "raw", actors=2, takes=1)
    manifest, problems = scan(tmp_path / "raw", ALL)
    assert problems == []
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert sorted(manifest["path"]) == sorted(p.as_posix() for p in paths)
    row = manifest.set_index("path").loc[paths[0].as_posix()]
    assert row["sha256"] == hashlib.sha256(paths[0].read_bytes()).hexdigest()
    assert row["duration"] == pytest.approx(1.3)  # 0.8 s of tone between 2 x 0.25 s silence
    assert (row["sample_rate"], row["channels"]) == (SAMPLE_RATE, 1)
    assert (row["corpus"], row["speaker"], row["sex"]) == ("ravdess", "ravdess:01", "male")
    assert set(manifest["speaker"]) == {"ravdess:01", "ravdess:02"}


def test_rows_are_sorted_and_reproducible(tmp_path):
    write_ravdess_corpus(tmp_path / "raw", actors=2, takes=1)
    first, _ = scan(tmp_path / "raw", ALL)
    second, _ = scan(tmp_path / "raw", ALL)
    assert first["path"].tolist() == sorted(first["path"])
    assert first.equals(second)


def test_mixed_corpora_and_formats(tmp_path):
    raw = tmp_path / "raw"
    write_audio(raw / "ravdess" / "03-01-05-01-01-01-01.flac", tone(0.5))
    write_audio(raw / "crema" / "1001_DFA_ANG_XX.wav", tone(0.5), 22_050)
    write_audio(raw / "tess" / "OAF_back_ps.wav", np.stack([tone(0.5)] * 2, axis=1), 24_414)
    write_audio(raw / "savee" / "DC" / "a01.ogg", tone(0.5), 44_100)
    manifest, problems = scan(raw, ALL)
    assert problems == []
    by_corpus = manifest.set_index("corpus")
    assert set(by_corpus.index) == {"ravdess", "crema_d", "tess", "savee"}
    assert by_corpus.loc["tess", "channels"] == 2
    assert by_corpus.loc["savee", "sample_rate"] == 44_100
    assert by_corpus.loc["crema_d", "duration"] == pytest.approx(8_000 / 22_050)


def test_any_channel_count_is_kept_as_decoding_downmixes_it(tmp_path):
    surround = np.stack([tone(0.5, 200 + 50 * k) for k in range(6)], axis=1)
    path = write_audio(tmp_path / "03-01-05-01-01-01-01.wav", surround)
    manifest, problems = scan(tmp_path, ALL)
    assert problems == []
    assert manifest["channels"].tolist() == [6]
    assert load_clip(path, AudioParams()).ndim == 1  # the same file, as features see it


def test_sha256_of_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(np.random.default_rng(1).bytes(100_000))
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def broken_files(raw):
    """Files named by the RAVDESS convention whose content is unusable, with the expected reason."""
    folder = raw / "Actor_09"
    folder.mkdir(parents=True)
    cases = {}
    empty = folder / "03-01-01-01-01-01-09.wav"
    empty.write_bytes(b"")
    cases[empty] = "empty file"
    text = folder / "03-01-03-01-01-01-09.wav"
    text.write_text("this is a text file, not audio")
    cases[text] = "not readable audio"
    corrupt = folder / "03-01-04-01-01-01-09.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    cases[corrupt] = "not readable audio"
    no_frames = write_audio(folder / "03-01-05-01-01-01-09.wav", np.zeros((0, 1), np.float32))
    cases[no_frames] = "empty: no audio frames"
    low_rate = write_audio(
        folder / "03-01-06-01-01-01-09.wav", tone(0.5, 300, sample_rate=4000), 4000
    )
    cases[low_rate] = "odd sample rate 4000 Hz"
    fifo = folder / "03-01-07-01-01-01-09.wav"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    cases[fifo] = "not a regular file"
    return cases


@pytest.mark.timeout(30)
def test_unusable_files_become_problems_with_reasons(tmp_path):
    raw = tmp_path / "raw"
    good = write_ravdess_corpus(raw, actors=1, takes=1)
    cases = broken_files(raw)
    manifest, problems = scan(raw, ALL)
    assert sorted(manifest["path"]) == sorted(p.as_posix() for p in good)
    reasons = {problem.path: problem.reason for problem in problems}
    assert set(reasons) == {path.as_posix() for path in cases}
    for path, expected in cases.items():
        assert expected in reasons[path.as_posix()], path.name


def test_names_outside_every_convention_are_problems(tmp_path):
    raw = tmp_path / "raw"
    write_audio(raw / "notes.wav", tone(0.5))
    write_audio(raw / "Actor_01" / "01-01-05-01-01-01-01.wav", tone(0.5))  # a video's audio
    (raw / "README.md").write_text("not audio at all")  # not an audio suffix: ignored
    manifest, problems = scan(raw, ALL)
    assert manifest.empty
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert sorted(problems, key=lambda p: p.path) == [
        Problem(
            (raw / "Actor_01" / "01-01-05-01-01-01-01.wav").as_posix(),
            "RAVDESS modality 01/vocal channel 01: only audio-only speech (03-01)",
        ),
        Problem(
            (raw / "notes.wav").as_posix(),
            "name matches no corpus convention (ravdess, crema_d, tess, savee)",
        ),
    ]


def test_only_the_configured_corpora_are_recognised(tmp_path):
    raw = tmp_path / "raw"
    write_audio(raw / "OAF_back_ps.wav", tone(0.5))
    write_audio(raw / "03-01-05-01-01-01-01.wav", tone(0.5))
    manifest, problems = scan(raw, ["ravdess"])
    assert manifest["corpus"].tolist() == ["ravdess"]
    assert [p.path for p in problems] == [(raw / "OAF_back_ps.wav").as_posix()]


def test_upper_case_suffixes_count_as_audio(tmp_path):
    write_audio(tmp_path / "03-01-05-01-01-01-01.WAV", tone(0.5), 16_000)
    manifest, _ = scan(tmp_path, ALL)
    assert len(manifest) == 1


def test_missing_raw_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run `ser data` first"):
        scan(tmp_path / "nowhere", ALL)


def test_describe_checks_the_name_before_the_content(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="matches no corpus convention"):
        describe_clip(path, ALL)
