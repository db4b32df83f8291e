"""Decoding and conditioning of one clip: array in, array out, I/O only in ``decode``."""

from __future__ import annotations

import io
import re
import stat
from pathlib import Path

import librosa
import numpy as np
import soundfile
import soxr

from ser.config import AudioParams

SILENCE_PEAK = 1e-4
"""A clip whose absolute peak stays below this is silent (about -80 dBFS)."""
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 96_000


class BadAudio(ValueError):
    """The file cannot be used as speech; the message says why."""


def require_regular_file(path: Path) -> None:
    """Raise BadAudio unless ``path`` is a regular file: reading a FIFO or a device may never end.

    The reason is the system's (``no such file or directory``, ``too many levels of symbolic
    links``, ``permission denied``) in lower case, as every other reason is.
    """
    try:
        mode = path.stat().st_mode
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise BadAudio(reason[:1].lower() + reason[1:]) from None
    if not stat.S_ISREG(mode):
        raise BadAudio("not a regular file")


def check_header(frames: int, sample_rate: int, max_duration: float | None = None) -> None:
    """Raise BadAudio for a file without frames, at an odd rate, or longer than ``max_duration`` s.

    The one rule for the manifest and for decoding; any channel count is fine (``downmix``).
    """
    if frames <= 0:
        raise BadAudio("empty: no audio frames")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise BadAudio(
            f"odd sample rate {sample_rate} Hz (supported {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)"
        )
    if max_duration is not None and frames > max_duration * sample_rate:
        raise BadAudio(
            f"too long: {frames / sample_rate:.1f} s (audio.max_duration is {max_duration} s)"
        )


def decode(source: Path | bytes, max_duration: float | None = None) -> tuple[np.ndarray, int]:
    """Read a file (or the bytes of one) as float32 frames x channels; raise BadAudio when it
    cannot be used.

    The header is checked before the samples are read, so a long file costs no memory.
    """
    if isinstance(source, bytes):
        if not source:
            raise BadAudio("empty: no bytes")
        opened = io.BytesIO(source)
    else:
        require_regular_file(source)
        if source.stat().st_size == 0:  # as the same empty upload reads in the server
            raise BadAudio("empty: no bytes")
        opened = source
    try:
        with soundfile.SoundFile(opened) as file:
            check_header(file.frames, file.samplerate, max_duration)
            check_complete(file.extra_info)
            return file.read(dtype="float32", always_2d=True), file.samplerate
    except BadAudio:
        raise
    except soundfile.LibsndfileError as error:
        raise BadAudio(f"not readable audio ({error.error_string})") from None
    except (RuntimeError, ValueError) as error:
        raise BadAudio(f"not readable audio ({error})") from None


# libsndfile's report on a WAV or AIFF whose data chunk is shorter than its header says
# (it then quietly reads what is there): "data : 32000 (should be 15978)"
SHORT_CHUNK = re.compile(r"^(?:data|FORM) *: (\d+) \(should be (\d+)\)", re.MULTILINE)
STREAMED_SIZE = 0xFFFFFFFF  # a size written before the length was known, not a promise


def check_complete(report: str) -> None:
    """Raise BadAudio for a file cut short (a truncated download or upload), from the
    report libsndfile gives of the file's header (``SoundFile.extra_info``)."""
    if (found := SHORT_CHUNK.search(report)) and int(found[2]) < int(found[1]) < STREAMED_SIZE:
        raise BadAudio(
            f"truncated: the header announces {found[1]} bytes of audio, the file holds {found[2]}"
        )


def require_finite(samples: np.ndarray) -> None:
    """Raise BadAudio for NaN or Inf samples (a float file can hold them)."""
    if not np.isfinite(samples).all():
        raise BadAudio("non-finite samples (NaN or Inf)")


def downmix(samples: np.ndarray) -> np.ndarray:
    """Average any number of channels into mono."""
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def remove_dc(signal: np.ndarray) -> np.ndarray:
    """The signal minus its mean: a DC offset is no sound, and must not count as level."""
    return (signal - signal.mean(dtype=np.float64)).astype(signal.dtype)


def resample(signal: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """High-quality resampling with soxr; a no-op at the target rate."""
    if source_rate == target_rate:
        return signal
    return soxr.resample(signal, source_rate, target_rate, quality="HQ").astype(np.float32)


def trim_silence(signal: np.ndarray, top_db: float) -> np.ndarray:
    """Cut leading and trailing frames quieter than the peak minus ``top_db``."""
    trimmed, _ = librosa.effects.trim(signal, top_db=top_db, frame_length=1024, hop_length=256)
    return trimmed


def fixed_window(
    signal: np.ndarray, sample_rate: int, offset: float, window: float | None
) -> np.ndarray:
    """The part from ``offset`` seconds on, ``window`` seconds long (None: to the end)."""
    start = int(offset * sample_rate)
    stop = None if window is None else start + int(window * sample_rate)
    return signal[start:stop]


def normalise_loudness(signal: np.ndarray, target_dbfs: float) -> np.ndarray:
    """Scale to an RMS level of ``target_dbfs``, then keep the peak at or below full scale."""
    rms = float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))
    scaled = signal * (10 ** (target_dbfs / 20) / rms)
    peak = float(np.max(np.abs(scaled)))
    return (scaled / peak if peak > 1 else scaled).astype(np.float32)


def condition(samples: np.ndarray, sample_rate: int, params: AudioParams) -> np.ndarray:
    """Downmix, remove DC, resample, trim and normalise; raise BadAudio for NaN or Inf, silence
    or too short."""
    require_finite(samples)
    signal = remove_dc(downmix(samples))  # before every level check: an offset is no sound
    if float(np.max(np.abs(signal))) < SILENCE_PEAK:
        raise BadAudio("silent: peak below -80 dBFS")
    signal = resample(signal, sample_rate, params.sample_rate)
    signal = fixed_window(signal, params.sample_rate, params.offset, params.window)
    if params.trim_top_db is not None:
        signal = trim_silence(signal, params.trim_top_db)
    if len(signal) < params.min_duration * params.sample_rate:
        raise BadAudio(
            f"too short: {len(signal) / params.sample_rate:.2f} s of sound after trimming "
            f"(audio.min_duration is {params.min_duration} s)"
        )
    return normalise_loudness(signal, params.target_dbfs)


def load_clip(source: Path | bytes, params: AudioParams) -> np.ndarray:
    """Decode and condition one file (or its bytes) into the mono signal features are computed on."""
    samples, sample_rate = decode(source, params.max_duration)
    return condition(samples, sample_rate, params)
