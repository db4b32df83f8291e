"""Decoding and conditioning of one clip."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile
from conftest import SAMPLE_RATE, noise, tone, write_audio

from ser.config import AudioParams
from ser.signal.audio import (
    BadAudio,
    condition,
    decode,
    downmix,
    load_clip,
    normalise_loudness,
    resample,
    trim_silence,
)


def rms_dbfs(signal: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))


def test_downmix_averages_channels():
    left, right = tone(0.1, 220), tone(0.1, 330)
    mono = downmix(np.stack([left, right], axis=1))
    assert mono.shape == left.shape
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)


def test_downmix_leaves_mono_alone():
    signal = tone(0.1)
    assert downmix(signal) is signal


@pytest.mark.parametrize("source_rate", [8_000, 22_050, 44_100, 48_000])
def test_resample_length_follows_the_rate(source_rate):
    signal = tone(1.5, 440, sample_rate=source_rate)
    out = resample(signal, source_rate, SAMPLE_RATE)
    assert abs(len(out) - 1.5 * SAMPLE_RATE) <= 1
    assert out.dtype == np.float32


def test_resample_keeps_the_frequency():
    out = resample(tone(1.0, 1000, sample_rate=44_100), 44_100, SAMPLE_RATE)
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(out)
    assert abs(peak_hz - 1000) < 2


def test_resample_is_a_no_op_at_the_target_rate():
    signal = tone(0.2)
    assert resample(signal, SAMPLE_RATE, SAMPLE_RATE) is signal


def test_trimming_removes_leading_and_trailing_silence():
    speech = tone(0.5, 220)
    signal = np.concatenate([np.zeros(SAMPLE_RATE), speech, np.zeros(SAMPLE_RATE // 2)])
    trimmed = trim_silence(signal, top_db=30)
    # what is left is the tone, give or take one analysis frame (1024 samples) per side
    assert len(speech) <= len(trimmed) <= len(speech) + 2 * 1024
    assert np.abs(trimmed[:1024]).max() > 0.1


def test_trimming_keeps_quiet_speech_within_top_db():
    signal = np.concatenate([tone(0.3, 220, amplitude=0.5), tone(0.3, 220, amplitude=0.05)])
    assert len(trim_silence(signal, top_db=30)) >= len(signal) - 1024


@pytest.mark.parametrize("target_dbfs", [-30.0, -20.0, -12.0])
@pytest.mark.parametrize("amplitude", [0.001, 0.05, 0.9])
def test_normalisation_hits_the_target_rms(target_dbfs, amplitude):
    out = normalise_loudness(tone(0.5, 220, amplitude=amplitude), target_dbfs)
    assert rms_dbfs(out) == pytest.approx(target_dbfs, abs=0.01)
    assert out.dtype == np.float32


def test_normalisation_never_clips():
    spiky = np.zeros(SAMPLE_RATE, np.float32)
    spiky[::2000] = 0.5  # crest factor far above what -6 dBFS RMS allows
    out = normalise_loudness(spiky, target_dbfs=-6.0)
    assert np.abs(out).max() == pytest.approx(1.0)
    assert rms_dbfs(out) < -6.0


def test_condition_makes_mono_at_the_target_rate_and_level():
    rate = 44_100
    stereo = np.stack([tone(1.0, 300, 0.2, rate), tone(1.0, 300, 0.1, rate)], axis=1)
    padded = np.concatenate([np.zeros((rate // 2, 2), np.float32), stereo])
    params = AudioParams()
    out = condition(padded, rate, params)
    assert out.ndim == 1
    assert abs(len(out) - SAMPLE_RATE) < 2 * 1024  # the leading half second is gone
    assert rms_dbfs(out) == pytest.approx(params.target_dbfs, abs=0.01)


def test_silence_is_bad_audio():
    with pytest.raises(BadAudio, match="silent"):
        condition(np.zeros((SAMPLE_RATE, 1), np.float32), SAMPLE_RATE, AudioParams())


def test_too_short_after_trimming_is_bad_audio():
    blip = np.concatenate([np.zeros(SAMPLE_RATE), tone(0.1), np.zeros(SAMPLE_RATE)])
    with pytest.raises(BadAudio, match=r"too short: 0\.\d+ s .*min_duration is 0.3 s"):
        condition(blip[:, None], SAMPLE_RATE, AudioParams(min_duration=0.3))


def test_load_clip_reads_and_conditions(tmp_path):
    path = write_audio(tmp_path / "clip.flac", noise(0.8, 0.2, sample_rate=22_050), 22_050)
    out = load_clip(path, AudioParams())
    assert abs(len(out) - 0.8 * SAMPLE_RATE) <= 1024
    assert rms_dbfs(out) == pytest.approx(-20.0, abs=0.01)


def test_decode_gives_frames_by_channels(tmp_path):
    path = write_audio(tmp_path / "stereo.wav", np.zeros((100, 2), np.float32) + 0.1)
    samples, rate = decode(path)
    assert samples.shape == (100, 2)
    assert rate == SAMPLE_RATE


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty: no bytes"),  # as an empty upload reads in the server
        (b"this is a text file, not audio", "not readable audio"),
        (np.random.default_rng(0).bytes(4096), "not readable audio"),
    ],
    ids=["empty", "text", "random-bytes"],
)
def test_unreadable_files_are_bad_audio(tmp_path, content, reason):
    path = tmp_path / "clip.wav"
    path.write_bytes(content)
    with pytest.raises(BadAudio, match=reason):
        decode(path)


def test_truncated_flac_is_bad_audio(tmp_path):
    path = write_audio(tmp_path / "clip.flac", noise(1.0))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadAudio, match="not readable audio"):
        load_clip(path, AudioParams())


@pytest.mark.parametrize("suffix", [".wav", ".aiff"])
def test_truncated_pcm_files_are_bad_audio_not_shorter_clips(tmp_path, suffix):
    path = write_audio(tmp_path / f"clip{suffix}", noise(1.0))
    whole = path.read_bytes()
    assert decode(path)[0].shape == (SAMPLE_RATE, 1)
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        BadAudio, match=r"^truncated: the header announces \d+ bytes of audio, the file holds \d+$"
    ):
        decode(path)
    with pytest.raises(BadAudio, match="truncated"):
        decode(whole[: len(whole) // 2])  # the bytes of a request, as served


def test_trailing_bytes_and_streamed_sizes_are_not_truncation(tmp_path):
    path = write_audio(tmp_path / "clip.wav", noise(1.0))
    whole = path.read_bytes()
    assert decode(whole + b"\0" * 100)[0].shape == (SAMPLE_RATE, 1)
    streamed = bytearray(whole)
    data = whole.index(b"data")
    streamed[data + 4 : data + 8] = (0xFFFFFFFF).to_bytes(
        4, "little"
    )  # length not known when written
    assert decode(bytes(streamed))[0].shape == (SAMPLE_RATE, 1)


def test_an_unreadable_clips_reason_is_libsndfiles_not_a_python_repr():
    with pytest.raises(BadAudio, match=r"^not readable audio \(Format not recognised\.\)$"):
        decode(b"plain text, not audio")


def test_file_without_frames_is_bad_audio(tmp_path):
    path = write_audio(tmp_path / "clip.wav", np.zeros((0, 1), np.float32))
    with pytest.raises(BadAudio, match="empty: no audio frames"):
        decode(path)


def test_missing_file_is_bad_audio(tmp_path):
    with pytest.raises(BadAudio, match=r"^no such file or directory$"):
        decode(tmp_path / "nowhere.wav")


@pytest.mark.timeout(10)
def test_fifo_is_not_read(tmp_path):
    fifo = tmp_path / "x.wav"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(BadAudio, match=r"^not a regular file$"):
        load_clip(fifo, AudioParams())


@pytest.mark.parametrize("trim_top_db", [30.0, None])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_bad_audio(tmp_path, bad, trim_top_db):
    signal = tone(1.0)
    signal[::4000] = bad
    path = tmp_path / "clip.wav"
    soundfile.write(path, signal, SAMPLE_RATE, subtype="FLOAT")  # the one format that keeps NaN
    with pytest.raises(BadAudio, match=r"^non-finite samples \(NaN or Inf\)$"):
        load_clip(path, AudioParams(trim_top_db=trim_top_db))


def test_too_long_is_bad_audio_before_the_samples_are_read(tmp_path, monkeypatch):
    path = write_audio(tmp_path / "clip.flac", noise(3.0))
    monkeypatch.setattr(soundfile.SoundFile, "read", lambda *_, **__: pytest.fail("read"))
    with pytest.raises(BadAudio, match=r"^too long: 3\.0 s \(audio\.max_duration is 2\.0 s\)$"):
        load_clip(path, AudioParams(max_duration=2.0))


def test_no_max_duration_keeps_long_clips(tmp_path):
    path = write_audio(tmp_path / "clip.flac", noise(3.0))
    assert abs(len(load_clip(path, AudioParams(max_duration=None))) - 3 * SAMPLE_RATE) <= 1024


def test_odd_sample_rate_is_bad_audio(tmp_path):
    path = write_audio(tmp_path / "clip.wav", tone(0.5, 300, sample_rate=4000), 4000)
    with pytest.raises(BadAudio, match=r"odd sample rate 4000 Hz \(supported 8000-96000 Hz\)"):
        load_clip(path, AudioParams())


def test_any_channel_count_is_downmixed(tmp_path):
    surround = np.stack([tone(0.8, 200 + 50 * k) for k in range(6)], axis=1)
    out = load_clip(write_audio(tmp_path / "clip.wav", surround), AudioParams())
    assert out.ndim == 1
    assert abs(len(out) - 0.8 * SAMPLE_RATE) <= 1024
