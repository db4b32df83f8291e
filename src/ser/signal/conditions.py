"""Recording conditions a clip is scored under in the robustness benchmark: noise of three
kinds at an SNR, a telephone channel, rooms, a quieter recording stored at 16 bits, clipping.

Each function takes a clip (float32, mono) and returns the clip as that condition would have
recorded it, with its sample rate. Randomness comes from the generator given, which the
benchmark seeds from its own namespace (``BENCHMARK_SEED``); training augmentation
(``ser.signal.augment``) uses other generators and another library, and never these rooms,
so the benchmark does not reward memorised noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.signal
import soxr

TELEPHONE_RATE = 8_000
TELEPHONE_BAND = (300.0, 3_400.0)
MU = 255  # G.711 mu-law


def power(signal: np.ndarray) -> float:
    return float(np.mean(np.square(signal, dtype=np.float64)))


def white_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(length).astype(np.float32)


def pink_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power falls by 3 dB per octave (1/f), shaped from white noise in frequency."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    frequencies = np.arange(len(spectrum), dtype=np.float64)
    frequencies[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(frequencies), n=length).astype(np.float32)


def babble(talkers: list[np.ndarray], length: int, rng: np.random.Generator) -> np.ndarray:
    """Other speakers talking at once: each talker at equal power, looped to ``length`` from
    a random start."""
    mixed = np.zeros(length, np.float64)
    for talker in talkers:
        start = int(rng.integers(0, len(talker)))
        looped = np.resize(np.roll(talker, -start), length)
        mixed += looped / np.sqrt(max(power(looped), 1e-12))
    return mixed.astype(np.float32)


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal`` plus ``noise`` scaled so that the clip's power is ``snr_db`` above the noise's."""
    scale = np.sqrt(power(signal) / (max(power(noise), 1e-20) * 10 ** (snr_db / 10)))
    return (signal + scale * noise[: len(signal)]).astype(np.float32)


def telephone(signal: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    """A narrow-band telephone channel: band-pass 300-3,400 Hz, 8 kHz, G.711 mu-law at 8 bits."""
    sos = scipy.signal.butter(6, TELEPHONE_BAND, btype="bandpass", fs=sample_rate, output="sos")
    band = scipy.signal.sosfilt(sos, signal)
    narrow = soxr.resample(band, sample_rate, TELEPHONE_RATE, quality="HQ")
    peak = max(float(np.max(np.abs(narrow))), 1e-9)
    scaled = np.clip(narrow / peak, -1.0, 1.0)  # the line's level control
    encoded = np.sign(scaled) * np.log1p(MU * np.abs(scaled)) / np.log1p(MU)
    quantised = np.round((encoded + 1) / 2 * MU) / MU * 2 - 1  # 8-bit codewords
    decoded = np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(MU)) / MU
    return (decoded * peak).astype(np.float32), TELEPHONE_RATE


@dataclass(frozen=True)
class Room:
    """A shoebox room (metres) with its reverberation time, a talker and a microphone in it."""

    size: tuple[float, float, float]
    rt60: float
    source: tuple[float, float, float]
    microphone: tuple[float, float, float]


def impulse_response(room: Room, sample_rate: int, attempts: int = 4) -> np.ndarray:
    """The room's impulse response from talker to microphone (image-source method), with a
    measured RT60 (T30) within 5 % of the room's where a few corrections reach it: Sabine's
    formula, which sets the walls' absorption, is only a first guess for a shoebox."""
    import pyroomacoustics as pra

    target = room.rt60
    for _ in range(attempts):
        absorption, max_order = pra.inverse_sabine(target, list(room.size))
        shoebox = pra.ShoeBox(
            list(room.size), fs=sample_rate, materials=pra.Material(absorption), max_order=max_order
        )
        shoebox.add_source(list(room.source))
        shoebox.add_microphone(list(room.microphone))
        shoebox.compute_rir()
        response = np.asarray(shoebox.rir[0][0], np.float32)
        measured = pra.experimental.measure_rt60(response, fs=sample_rate, decay_db=30)
        if abs(measured / room.rt60 - 1) < 0.05:
            break
        target *= room.rt60 / measured
    return response


def reverberate(signal: np.ndarray, response: np.ndarray) -> np.ndarray:
    """``signal`` as heard through ``response``, cut to its own length."""
    return scipy.signal.fftconvolve(signal, response)[: len(signal)].astype(np.float32)


def quieter(signal: np.ndarray, gain_db: float) -> np.ndarray:
    """The clip ``gain_db`` quieter, stored as 16-bit PCM (the quantisation noise stays)."""
    scaled = signal * 10 ** (-abs(gain_db) / 20)
    return (np.round(np.clip(scaled, -1, 1) * 32767) / 32767).astype(np.float32)


def clipped(signal: np.ndarray, overdrive_db: float) -> np.ndarray:
    """The clip recorded ``overdrive_db`` too hot: its peak that far above full scale, clipped."""
    peak = max(float(np.max(np.abs(signal))), 1e-9)
    return np.clip(signal / peak * 10 ** (overdrive_db / 20), -1, 1).astype(np.float32)
