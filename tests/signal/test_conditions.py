"""Recording conditions of the robustness benchmark: each does what its name says."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
from conftest import SAMPLE_RATE, tone

from ser.signal import conditions

RNG_SEED = 3


def speech_like(seconds: float = 2.0) -> np.ndarray:
    """A harmonic tone with a syllable-rate envelope and pauses, like a voice."""
    signal = sum(tone(seconds, 140 * k, 0.3 / k) for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 3 * np.arange(len(signal)) / SAMPLE_RATE), 0, None)
    return (signal * envelope).astype(np.float32)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    return 10 * np.log10(conditions.power(clean) / conditions.power(noisy - clean))


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
@pytest.mark.parametrize("target", [20.0, 10.0, 5.0])
def test_noise_is_mixed_at_the_snr_asked_for(kind, target):
    clean = speech_like()
    rng = np.random.default_rng(RNG_SEED)
    if kind == "white":
        noise = conditions.white_noise(len(clean), rng)
    elif kind == "pink":
        noise = conditions.pink_noise(len(clean), rng)
    else:
        talkers = [speech_like(1.3) * (k + 1) for k in range(4)]
        noise = conditions.babble(talkers, len(clean), rng)
    noisy = conditions.mix_at_snr(clean, noise, target)
    assert len(noisy) == len(clean) and noisy.dtype == np.float32
    assert abs(snr_db(clean, noisy) - target) < 0.5


def band_power_db(signal: np.ndarray, rate: int, low: float, high: float) -> float:
    frequencies, density = scipy.signal.welch(signal, rate, nperseg=2048)
    band = (frequencies >= low) & (frequencies < high)
    return 10 * np.log10(density[band].mean())


def test_pink_noise_loses_3_db_per_octave():
    noise = conditions.pink_noise(20 * SAMPLE_RATE, np.random.default_rng(RNG_SEED))
    frequencies, density = scipy.signal.welch(noise, SAMPLE_RATE, nperseg=4096)
    band = (frequencies > 100) & (frequencies < 6000)
    slope = np.polyfit(np.log2(frequencies[band]), 10 * np.log10(density[band]), 1)[0]
    assert slope == pytest.approx(-3.0, abs=0.3)  # dB per octave: power density ~ 1/f


def test_babble_is_other_talkers_at_equal_power():
    quiet, loud = speech_like(1.0), 10 * speech_like(1.5)
    mixed = conditions.babble([quiet, loud], 3 * SAMPLE_RATE, np.random.default_rng(RNG_SEED))
    assert len(mixed) == 3 * SAMPLE_RATE
    alone = conditions.babble([quiet], 3 * SAMPLE_RATE, np.random.default_rng(RNG_SEED))
    assert conditions.power(alone) == pytest.approx(1.0, rel=0.05)  # each talker at unit power


def test_the_telephone_keeps_300_to_3400_hz_at_8_khz_in_mu_law():
    rng = np.random.default_rng(RNG_SEED)
    wide = conditions.white_noise(3 * SAMPLE_RATE, rng) * 0.1
    narrow, rate = conditions.telephone(wide, SAMPLE_RATE)
    assert rate == conditions.TELEPHONE_RATE == 8000
    assert len(narrow) == 3 * 8000
    passband = band_power_db(narrow, rate, 600, 3000)
    assert passband - band_power_db(narrow, rate, 20, 120) > 30
    assert passband - band_power_db(narrow, rate, 3800, 4000) > 15
    peak = np.max(np.abs(narrow))
    codewords = np.unique(np.round(np.log1p(255 * np.abs(narrow) / peak) / np.log1p(255) * 255))
    assert len(codewords) <= 256  # one byte per sample


@pytest.mark.parametrize("rt60", [0.3, 0.6, 0.9])
def test_a_room_reverberates_for_its_rt60(rt60):
    import pyroomacoustics as pra

    room = conditions.Room((7.0, 5.0, 3.0), rt60, (2.0, 3.0, 1.6), (4.5, 1.8, 1.2))
    response = conditions.impulse_response(room, SAMPLE_RATE)
    measured = pra.experimental.measure_rt60(response, fs=SAMPLE_RATE, decay_db=30)
    assert measured == pytest.approx(rt60, rel=0.2)
    clean = speech_like()
    wet = conditions.reverberate(clean, response)
    assert len(wet) == len(clean)
    assert not np.allclose(wet, clean)


@pytest.mark.parametrize("gain_db", [30.0, 45.0])
def test_a_quieter_recording_is_that_much_quieter_on_the_16_bit_grid(gain_db):
    clean = speech_like()
    quiet = conditions.quieter(clean, gain_db)
    loss = 10 * np.log10(conditions.power(clean) / conditions.power(quiet))
    assert loss == pytest.approx(gain_db, abs=0.2)
    np.testing.assert_allclose(quiet * 32767, np.round(quiet * 32767), atol=1e-3)


def test_clipping_flattens_the_peaks_at_full_scale():
    clean = speech_like()
    hot = conditions.clipped(clean, 12.0)
    assert np.max(np.abs(hot)) == pytest.approx(1.0)
    assert 0.01 < np.mean(np.abs(hot) >= 0.999) < 0.5
