"""Per-frame acoustic features, their per-clip statistics, and log-mel frames."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import SAMPLE_RATE, noise, tone

from ser.config import AudioParams, FeatureParams, FrameParams
from ser.signal.audio import condition, resample
from ser.signal.features import (
    N_CHROMA,
    clip_features,
    feature_names,
    frame_feature_names,
    frame_features,
    logmel_frames,
)


def seed_params(**override) -> FeatureParams:
    """The seed (librosa) set alone, small: 32 mel bands, 13 MFCCs, at the clip's own rate."""
    return FeatureParams(
        **{"sets": ["seed"], "n_mels": 32, "n_mfcc": 13, "sample_rate": None, **override}
    )


PARAMS = seed_params()
FRAMES = FrameParams(n_mels=16, max_frames=64)

SIGNALS = {
    "tone": tone(0.6, 220),
    "noise": noise(0.6, 0.1),
    "shorter-than-n_fft": tone(0.01, 440),
    "silence": np.zeros(SAMPLE_RATE // 2, np.float32),
}


@pytest.mark.parametrize("name", list(SIGNALS))
@pytest.mark.parametrize(
    "stats", [["mean"], ["mean", "std"], ["min", "max", "median", "skew", "kurtosis"]]
)
def test_vector_matches_names_and_is_finite(name, stats):
    params = seed_params(stats=stats)
    vector = clip_features(SIGNALS[name], SAMPLE_RATE, params)
    assert vector.shape == (len(feature_names(params)),)
    assert vector.dtype == np.float32
    assert np.all(np.isfinite(vector))


def test_names_are_unique_and_statistic_major():
    names = feature_names(seed_params(stats=["mean", "std"]))
    per_frame = 2 + N_CHROMA + 32 + 13
    assert len(names) == len(set(names)) == 2 * per_frame
    assert names[0] == "zcr_mean"
    assert names[per_frame] == "zcr_std"
    assert names[per_frame - 1] == "mfcc_12_mean"


def test_frame_features_follow_frame_names():
    frames = frame_features(tone(0.5), SAMPLE_RATE, PARAMS)
    assert frames.shape[0] == len(frame_feature_names(PARAMS))
    expected_frames = 1 + int(0.5 * SAMPLE_RATE) // PARAMS.hop_length
    assert frames.shape[1] == expected_frames


def test_statistics_are_selected_by_name():
    signal = noise(0.5, 0.1, seed=3)
    both = clip_features(signal, SAMPLE_RATE, PARAMS)
    mean = clip_features(signal, SAMPLE_RATE, seed_params(stats=["mean"]))
    std = clip_features(signal, SAMPLE_RATE, seed_params(stats=["std"]))
    np.testing.assert_allclose(both, np.concatenate([mean, std]), rtol=1e-6)
    frames = frame_features(signal, SAMPLE_RATE, PARAMS)
    np.testing.assert_allclose(mean, frames.mean(axis=1), rtol=1e-5)


def test_order_statistics_are_consistent():
    params = seed_params(stats=["min", "median", "max"])
    low, middle, high = np.split(clip_features(noise(0.5), SAMPLE_RATE, params), 3)
    assert np.all(low <= middle)
    assert np.all(middle <= high)


@pytest.mark.parametrize("n_mels", [32, 64])
def test_no_empty_mel_band_up_to_nyquist(n_mels):
    """fmax is the Nyquist frequency, so every band, the top ones included, sees energy."""
    params = seed_params(n_mels=n_mels, stats=["mean"])
    vector = clip_features(noise(1.0, 0.1), SAMPLE_RATE, params)
    log_mel = vector[[n.startswith("logmel_") for n in feature_names(params)]]
    assert len(log_mel) == n_mels
    floor = 10 * np.log10(1e-10)  # power_to_db of an empty band
    assert log_mel.min() > floor + 40
    # white noise has a flat spectrum: the top band is within a few dB of the middle one
    assert abs(log_mel[-1] - log_mel[n_mels // 2]) < 15


def test_mel_bands_track_where_the_energy_is():
    params = seed_params(stats=["mean"])
    names = feature_names(params)
    low = dict(zip(names, clip_features(tone(0.5, 200), SAMPLE_RATE, params), strict=True))
    high = dict(zip(names, clip_features(tone(0.5, 6000), SAMPLE_RATE, params), strict=True))
    assert low["logmel_02_mean"] > high["logmel_02_mean"]
    assert high["logmel_30_mean"] > low["logmel_30_mean"]
    assert high["zcr_mean"] > 10 * low["zcr_mean"]


def test_louder_clip_has_higher_rms_feature():
    params = seed_params(stats=["mean"])
    index = feature_names(params).index("rms_mean")
    quiet = clip_features(tone(0.5, amplitude=0.05), SAMPLE_RATE, params)[index]
    loud = clip_features(tone(0.5, amplitude=0.5), SAMPLE_RATE, params)[index]
    assert loud == pytest.approx(10 * quiet, rel=0.01)


def test_features_are_deterministic():
    signal = noise(0.5, seed=9)
    np.testing.assert_array_equal(
        clip_features(signal, SAMPLE_RATE, PARAMS), clip_features(signal, SAMPLE_RATE, PARAMS)
    )


@pytest.mark.parametrize(("feature_set", "size"), [("egemaps", 88), ("compare", 6373)])
def test_opensmile_sets_give_named_finite_vectors(feature_set, size):
    params = FeatureParams(sets=[feature_set])
    names = feature_names(params)
    vector = clip_features(tone(0.6), SAMPLE_RATE, params)
    assert len(names) == size == vector.shape[0]
    assert all(name.startswith(f"{feature_set}.") for name in names)
    assert np.isfinite(vector).all()


def test_sets_combine_in_the_order_given():
    params = seed_params(sets=["egemaps", "seed"])
    names = feature_names(params)
    seed_names = feature_names(PARAMS)
    assert names[:88] == feature_names(FeatureParams(sets=["egemaps"]))
    assert names[88:] == seed_names
    signal = tone(0.6)
    combined = clip_features(signal, SAMPLE_RATE, params)
    np.testing.assert_array_equal(combined[88:], clip_features(signal, SAMPLE_RATE, PARAMS))


@pytest.mark.parametrize("feature_set", ["seed", "egemaps"])
def test_a_lower_feature_rate_reads_the_clip_resampled_to_it(feature_set):
    """features.sample_rate 8000: every set sees only the band a telephone line keeps."""
    signal = tone(0.6, 300) + tone(0.6, 6000) + noise(0.6, 0.05)
    narrow = seed_params(sets=[feature_set], sample_rate=8000)
    resampled = resample(signal, SAMPLE_RATE, 8000)
    np.testing.assert_array_equal(
        clip_features(signal, SAMPLE_RATE, narrow),
        clip_features(resampled, 8000, seed_params(sets=[feature_set])),
    )
    full = clip_features(signal, SAMPLE_RATE, seed_params(sets=[feature_set]))
    assert not np.allclose(clip_features(signal, SAMPLE_RATE, narrow), full, rtol=0.05)


def test_opensmile_works_beside_tensorflow_in_one_process():
    """``ser.models``, where every module that loads TensorFlow lives, loads openSMILE's
    library first, as ``ser predict`` needs (the model loads before the features)."""
    script = (
        "from ser.models import kind_named\n"
        "kind_named('spectrogram_cnn')\n"
        "import keras, numpy as np\n"
        "from ser.config import FeatureParams\n"
        "from ser.signal.features import clip_features\n"
        "keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).predict_on_batch(np.ones((1, 4)))\n"
        "signal = (0.3 * np.sin(np.arange(9600) / 5)).astype(np.float32)\n"
        "print(clip_features(signal, 16000, FeatureParams(sets=['egemaps'])).shape)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("(88,)")


def test_logmel_frames_are_time_by_bands():
    signal = tone(0.5)
    frames = logmel_frames(signal, SAMPLE_RATE, FRAMES)
    assert frames.shape == (1 + len(signal) // FRAMES.hop_length, FRAMES.n_mels)
    assert frames.dtype == np.float32
    assert frames.flags.c_contiguous


@pytest.mark.parametrize("name", list(SIGNALS))
def test_logmel_frames_are_finite_float32(name):
    frames = logmel_frames(SIGNALS[name], SAMPLE_RATE, FRAMES)
    assert frames.dtype == np.float32
    assert frames.shape[1] == FRAMES.n_mels
    assert np.isfinite(frames).all()


def test_silence_gives_the_floor_not_minus_infinity():
    frames = logmel_frames(SIGNALS["silence"], SAMPLE_RATE, FRAMES)
    np.testing.assert_allclose(frames, -100.0, atol=1e-4)


def test_a_long_clip_keeps_its_middle_max_frames():
    signal = noise(3.0, seed=4)
    whole = logmel_frames(signal, SAMPLE_RATE, FRAMES.model_copy(update={"max_frames": 10_000}))
    assert len(whole) == 1 + len(signal) // FRAMES.hop_length == 151
    cropped = logmel_frames(signal, SAMPLE_RATE, FRAMES)
    start = (len(whole) - FRAMES.max_frames) // 2
    assert start == 43
    np.testing.assert_array_equal(cropped, whole[start : start + FRAMES.max_frames])


def test_the_crop_is_the_middle_of_the_clip_not_its_start():
    """Three seconds of 300, 1000 and 3000 Hz: a crop of under a second sees only 1000 Hz."""
    signal = np.concatenate([tone(1.0, 300), tone(1.0, 1000), tone(1.0, 3000)])
    params = FrameParams(n_mels=40, max_frames=40)
    frames = logmel_frames(signal, SAMPLE_RATE, params)
    assert len(frames) == 40
    loudest = set(frames.argmax(axis=1).tolist())
    only_middle = set(logmel_frames(tone(1.0, 1000), SAMPLE_RATE, params).argmax(axis=1).tolist())
    assert loudest <= only_middle


@pytest.mark.parametrize("samples", [1, 100, 639, 640, 641])
def test_a_signal_shorter_than_the_window_is_padded(samples):
    signal = tone(1.0)[:samples]
    frames = logmel_frames(signal, SAMPLE_RATE, FRAMES)
    padded = max(samples, FRAMES.win_length)
    assert frames.shape == (1 + padded // FRAMES.hop_length, FRAMES.n_mels)
    assert np.isfinite(frames).all()


def test_a_clip_under_max_frames_is_not_padded_to_it():
    frames = logmel_frames(tone(1.0), SAMPLE_RATE, FRAMES)
    assert len(frames) == 1 + SAMPLE_RATE // FRAMES.hop_length < FRAMES.max_frames


def test_logmel_bands_track_where_the_energy_is():
    low = logmel_frames(tone(0.5, 200), SAMPLE_RATE, FRAMES).mean(axis=0)
    high = logmel_frames(tone(0.5, 3600), SAMPLE_RATE, FRAMES).mean(axis=0)
    assert low.argmax() < FRAMES.n_mels // 4
    assert high.argmax() > 3 * FRAMES.n_mels // 4
    assert low[0] > high[0] + 20
    assert high[high.argmax()] > low[high.argmax()] + 20


def test_frame_settings_change_the_frames():
    signal = tone(0.5, 440) + noise(0.5, 0.01, seed=1)
    base = logmel_frames(signal, SAMPLE_RATE, FRAMES)
    for update in (
        {"n_mels": 24},
        {"hop_length": 160},
        {"fmin": 300.0},
        {"fmax": 8000.0},
        {"top_db": 30.0},
    ):
        other = logmel_frames(signal, SAMPLE_RATE, FRAMES.model_copy(update=update))
        assert other.shape != base.shape or not np.allclose(other, base), update
    np.testing.assert_array_equal(base, logmel_frames(signal, SAMPLE_RATE, FRAMES))


def test_no_cell_lies_more_than_top_db_under_the_loudest():
    """A tone over a faint noise floor: the floor is raised to top_db under the tone's peak."""
    signal = tone(1.0, 440) + noise(1.0, 1e-5, seed=2)
    for top_db in (40.0, 60.0):
        frames = logmel_frames(signal, SAMPLE_RATE, FRAMES.model_copy(update={"top_db": top_db}))
        assert frames.min() == pytest.approx(frames.max() - top_db, abs=1e-3)
    unfloored = logmel_frames(signal, SAMPLE_RATE, FRAMES.model_copy(update={"top_db": None}))
    assert unfloored.min() < unfloored.max() - 80


def test_the_floor_hides_what_a_quieter_16_bit_recording_changes():
    """Tone bursts over a studio-like noise floor, and the same recording 30 dB quieter stored at
    16 bits (its quantisation noise replaces the floor): after loudness normalisation the frames
    differ by under 1 dB on average with the default floor, and by far more without it."""
    bursts = np.concatenate([tone(0.3, 300), np.zeros(SAMPLE_RATE // 4, np.float32)] * 3)
    recording = bursts + noise(len(bursts) / SAMPLE_RATE, 3e-4, seed=3)
    quieter = np.round(recording * 10 ** (-30 / 20) * 32767) / 32767
    audio = AudioParams(trim_top_db=None)
    clean, copy = (condition(x, SAMPLE_RATE, audio) for x in (recording, quieter))

    def moved(frames: FrameParams) -> float:
        a, b = (logmel_frames(x, SAMPLE_RATE, frames) for x in (clean, copy))
        return float(np.abs(a - b).mean())

    assert FRAMES.top_db == 60.0
    assert moved(FRAMES) < 1.0
    assert moved(FRAMES.model_copy(update={"top_db": None})) > 3 * moved(FRAMES)
