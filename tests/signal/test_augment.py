"""Waveform augmentation of training clips: each transform does what it says, every copy is
seeded by its clip and number, and the same copy comes out of every process."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.signal
from conftest import PROJECT_ROOT, SAMPLE_RATE, tone, write_audio

from ser.config import AugmentParams
from ser.signal.augment import SEED_NAMESPACE, copy_seed, recipe_augmenter


def voice(seconds: float = 1.0) -> np.ndarray:
    """Harmonics of 150 Hz under a syllable-rate envelope: energy across the speech band."""
    signal = sum(tone(seconds, 150 * k, 0.25 / k) for k in range(1, 20))
    envelope = 0.2 + np.abs(np.sin(2 * np.pi * 2.5 * np.arange(len(signal)) / SAMPLE_RATE))
    return (signal * envelope).astype(np.float32)


def power_db(signal: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(signal, dtype=np.float64)))


def band_db(signal: np.ndarray, low: float, high: float) -> float:
    frequencies, density = scipy.signal.welch(signal, SAMPLE_RATE, nperseg=1024)
    return 10 * np.log10(density[(frequencies >= low) & (frequencies < high)].mean())


def augmented(recipe: list[str], signal: np.ndarray, seed: int = 1, **ranges) -> np.ndarray:
    params = AugmentParams(**ranges)
    return recipe_augmenter(recipe, params)(signal, SAMPLE_RATE, seed)


def test_copy_seeds_differ_by_seed_clip_and_copy_and_ignore_other_clips():
    base = copy_seed(7, "ab" * 32, 0)
    assert base == copy_seed(7, "ab" * 32, 0)
    assert (
        len(
            {
                base,
                copy_seed(8, "ab" * 32, 0),
                copy_seed(7, "cd" * 32, 0),
                copy_seed(7, "ab" * 32, 1),
            }
        )
        == 4
    )
    assert SEED_NAMESPACE == "ser.augment"


@pytest.mark.parametrize("snr", [5.0, 20.0])
def test_noise_is_added_at_an_snr_in_its_range(snr):
    clean = voice()
    noisy = augmented(["noise"], clean, noise_snr_db=(snr, snr))
    measured = power_db(clean) - power_db(noisy - clean)
    assert measured == pytest.approx(snr, abs=0.6)  # plus 16-bit rounding


def test_a_room_adds_a_reverberant_tail_and_keeps_the_length():
    clean = np.concatenate([voice(0.5), np.zeros(SAMPLE_RATE // 2, np.float32)])
    wet = augmented(["room"], clean, rt60=(0.8, 0.8))
    assert len(wet) == len(clean)
    tail = slice(int(0.6 * SAMPLE_RATE), None)
    assert power_db(wet[tail]) > power_db(clean[tail] + 1e-9) + 30  # the silence now rings


def test_a_band_keeps_the_telephone_band():
    narrow = augmented(["band"], voice(2.0), band_low_hz=(400, 400), band_high_hz=(3000, 3000))
    assert band_db(narrow, 800, 2500) - band_db(narrow, 5000, 7000) > 25
    assert band_db(narrow, 800, 2500) - band_db(narrow, 60, 120) > 12


def test_a_level_change_is_stored_at_16_bits():
    clean = voice()
    quiet = augmented(["level"], clean, level_db=(-30.0, -30.0))
    assert power_db(clean) - power_db(quiet) == pytest.approx(30.0, abs=0.3)
    np.testing.assert_allclose(quiet * 32767, np.round(quiet * 32767), atol=1e-3)


def test_babble_mixes_in_another_talker(tmp_path):
    other = write_audio(tmp_path / "other.wav", tone(1.0, 900, 0.3))
    clean = voice()
    params = AugmentParams(babble_snr_db=(10.0, 10.0))
    mixed = recipe_augmenter(["babble"], params, [str(other)])(clean, SAMPLE_RATE, 1)
    added = mixed - clean
    assert power_db(clean) - power_db(added) == pytest.approx(10.0, abs=1.0)
    spectrum = np.abs(np.fft.rfft(added))
    assert np.argmax(spectrum) * SAMPLE_RATE / len(added) == pytest.approx(900, abs=5)


def test_a_recipe_applies_its_transforms_in_order():
    clean = voice()
    stretched = augmented(["stretch"], clean, stretch_rate=(1.25, 1.25))
    both = augmented(["stretch", "noise"], clean, stretch_rate=(1.25, 1.25), noise_snr_db=(20, 20))
    assert len(stretched) == len(both) == pytest.approx(len(clean) / 1.25, rel=0.02)
    assert not np.allclose(both, stretched, atol=1e-3)


def test_the_same_seed_gives_the_same_copy_and_another_seed_another():
    clean = voice()
    recipe = ["room", "noise", "pitch"]
    first, again, other = (augmented(recipe, clean, seed) for seed in (5, 5, 6))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other, atol=1e-3)


def test_every_process_makes_the_same_copy(tmp_path):
    script = (
        "import sys, numpy as np, soundfile\n"
        "from ser.config import AugmentParams\n"
        "from ser.signal.augment import recipe_augmenter\n"
        "signal, rate = soundfile.read(sys.argv[1], dtype='float32')\n"
        "recipe = ['room', 'noise', 'band', 'codec', 'level', 'clip', 'pitch']\n"
        "copy = recipe_augmenter(recipe, AugmentParams())(signal, rate, 11)\n"
        "np.save(sys.argv[2], copy)\n"
    )
    clip = write_audio(tmp_path / "clip.wav", voice())
    outputs = [tmp_path / f"copy{i}.npy" for i in range(2)]
    for output in outputs:
        subprocess.run(
            [sys.executable, "-c", script, str(clip), str(output)],
            check=True,
            env={"PYTHONPATH": str(PROJECT_ROOT / "src"), "PATH": ""},
            timeout=120,
        )
    np.testing.assert_array_equal(*(np.load(path) for path in outputs))


def test_the_training_rooms_reverberate_for_the_times_asked_and_are_the_same_every_time():
    import pyroomacoustics as pra

    from ser.signal.augment import TRAINING_ROOMS, training_rooms

    bank = training_rooms(7, (0.2, 0.9), SAMPLE_RATE)
    assert len(bank) == TRAINING_ROOMS
    measured = [pra.experimental.measure_rt60(r, fs=SAMPLE_RATE, decay_db=30) for r in bank]
    np.testing.assert_allclose(measured, np.linspace(0.2, 0.9, TRAINING_ROOMS), rtol=0.1)
    training_rooms.cache_clear()
    np.testing.assert_array_equal(bank[5], training_rooms(7, (0.2, 0.9), SAMPLE_RATE)[5])


def test_a_codec_copy_keeps_a_quiet_clip_audible():
    quiet = voice() * 0.01  # about -50 dBFS: a plain bit crusher would round it to silence
    coded = augmented(["codec"], quiet, codec_kbps=(8, 8))
    assert len(coded) == len(quiet)
    assert power_db(coded) == pytest.approx(power_db(quiet), abs=3.0)
    assert not np.allclose(coded, quiet, atol=1e-4)
