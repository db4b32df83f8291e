"""Seeded augmentation: noise at an SNR, pitch shift, time stretch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLE_RATE, tone

from ser.config import AugmentParams
from ser.signal.augment import add_noise, apply_recipe, clip_rng, shift_pitch, stretch_time


def peak_frequency(signal: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(signal))


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0, 30.0])
def test_noise_is_added_at_the_requested_snr(snr_db):
    signal = tone(1.0, 220)
    noisy = add_noise(signal, snr_db, np.random.default_rng(0))
    added = noisy.astype(np.float64) - signal
    measured = 10 * np.log10(np.mean(np.square(signal, dtype=np.float64)) / np.mean(added**2))
    assert measured == pytest.approx(snr_db, abs=0.2)
    assert noisy.shape == signal.shape
    assert noisy.dtype == np.float32


def test_noise_leaves_the_input_untouched():
    signal = tone(0.2)
    before = signal.copy()
    add_noise(signal, 10.0, np.random.default_rng(0))
    np.testing.assert_array_equal(signal, before)


@pytest.mark.parametrize("semitones", [-2.0, 3.0])
def test_pitch_shift_keeps_length_and_moves_the_pitch(semitones):
    signal = tone(0.5, 440)
    shifted = shift_pitch(signal, SAMPLE_RATE, semitones)
    assert len(shifted) == len(signal)
    assert shifted.dtype == np.float32
    expected = 440 * 2 ** (semitones / 12)
    assert peak_frequency(shifted) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("rate", [0.8, 0.9, 1.1, 1.25])
def test_stretch_changes_length_by_the_inverse_rate(rate):
    signal = tone(1.0, 300)
    stretched = stretch_time(signal, rate)
    assert len(stretched) == pytest.approx(len(signal) / rate, rel=0.01)
    assert peak_frequency(stretched) == pytest.approx(300, rel=0.02)


def test_clip_rng_is_deterministic():
    first = clip_rng(7, "ab" * 32, 0).random(5)
    second = clip_rng(7, "ab" * 32, 0).random(5)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    "other", [(8, "ab" * 32, 0), (7, "cd" * 32, 0), (7, "ab" * 32, 1)], ids=["seed", "clip", "copy"]
)
def test_clip_rng_differs_by_seed_clip_and_copy(other):
    base = clip_rng(7, "ab" * 32, 0).random(5)
    assert not np.array_equal(base, clip_rng(*other).random(5))


def test_clip_rng_of_one_clip_ignores_other_clips():
    """Draws depend only on (seed, clip, copy), never on how many other clips were drawn first."""
    alone = clip_rng(7, "ef" * 32, 0).random(3)
    for other in ("01" * 32, "23" * 32):
        clip_rng(7, other, 0).random(1000)
    np.testing.assert_array_equal(alone, clip_rng(7, "ef" * 32, 0).random(3))


def test_recipe_is_reproducible_with_the_same_generator():
    params = AugmentParams()
    signal = tone(0.5, 220)
    runs = [
        apply_recipe(signal, SAMPLE_RATE, ["noise", "pitch"], params, clip_rng(1, "aa", 0))
        for _ in range(2)
    ]
    np.testing.assert_array_equal(*runs)
    assert not np.allclose(runs[0], signal, atol=1e-3)


def test_recipe_applies_each_kind_in_order():
    params = AugmentParams(stretch_rate=(1.25, 1.25), noise_snr_db=(20.0, 20.0))
    signal = tone(1.0, 220)
    out = apply_recipe(signal, SAMPLE_RATE, ["stretch", "noise"], params, np.random.default_rng(0))
    assert len(out) == pytest.approx(len(signal) / 1.25, rel=0.01)
    assert not np.allclose(out, stretch_time(signal, 1.25), atol=1e-3)  # noise came on top


def test_recipe_draws_within_the_configured_ranges():
    params = AugmentParams(noise_snr_db=(40.0, 40.0))
    signal = tone(1.0, 220)
    noisy = apply_recipe(signal, SAMPLE_RATE, ["noise"], params, np.random.default_rng(3))
    added = noisy.astype(np.float64) - signal
    measured = 10 * np.log10(np.mean(np.square(signal, dtype=np.float64)) / np.mean(added**2))
    assert measured == pytest.approx(40.0, abs=0.2)
