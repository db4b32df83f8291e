"""Seeded augmentation of training clips: noise at an SNR, pitch shift, time stretch."""

from __future__ import annotations

import hashlib

import librosa
import numpy as np

from ser.config import AugmentKind, AugmentParams


def add_noise(signal: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white noise whose power sits ``snr_db`` below the signal's."""
    signal_power = float(np.mean(np.square(signal, dtype=np.float64)))
    noise_power = signal_power / 10 ** (snr_db / 10)
    noise = rng.normal(0.0, np.sqrt(noise_power), size=signal.shape)
    return (signal + noise).astype(np.float32)


def shift_pitch(signal: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Shift pitch by ``semitones`` keeping the duration."""
    return librosa.effects.pitch_shift(
        signal, sr=sample_rate, n_steps=semitones, res_type="soxr_hq"
    ).astype(np.float32)


def stretch_time(signal: np.ndarray, rate: float) -> np.ndarray:
    """Play ``rate`` times faster keeping the pitch."""
    return librosa.effects.time_stretch(signal, rate=rate).astype(np.float32)


def clip_rng(seed: int, clip_sha256: str, copy_index: int) -> np.random.Generator:
    """A generator fixed by the seed, the clip's content and the copy: adding clips changes no other."""
    digest = hashlib.sha256(f"{seed}:{clip_sha256}:{copy_index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def apply_recipe(
    signal: np.ndarray,
    sample_rate: int,
    recipe: list[AugmentKind],
    params: AugmentParams,
    rng: np.random.Generator,
) -> np.ndarray:
    """Apply each kind of ``recipe`` in order with parameters drawn from ``rng``."""
    for kind in recipe:
        if kind == "noise":
            signal = add_noise(signal, rng.uniform(*params.noise_snr_db), rng)
        elif kind == "pitch":
            signal = shift_pitch(signal, sample_rate, rng.uniform(*params.pitch_semitones))
        else:
            signal = stretch_time(signal, rng.uniform(*params.stretch_rate))
    return signal
