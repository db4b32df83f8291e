"""Per-clip acoustic feature vectors from the sets named in ``features.sets``.

``seed``: the original design's features from a single STFT — per frame,
zero-crossing rate, RMS energy, 12 chroma bins, ``n_mels`` log-mel bands and
``n_mfcc`` MFCCs — summarised over the whole clip by ``features.stats``.
``egemaps`` (88) and ``compare`` (6,373): openSMILE's standard functionals.

Beside the vectors, ``logmel_frames`` gives the clip as a time x frequency image, the
spectrogram CNN's input (``frames`` section).
"""

from __future__ import annotations

from functools import cache

import librosa
import numpy as np
import scipy.fft
import scipy.stats

from ser.config import FeatureParams, FeatureSet, FrameParams
from ser.signal.audio import resample
from ser.signal.smile import SmileSet

N_CHROMA = 12

_STATISTICS = {
    "mean": lambda frames: frames.mean(axis=1),
    "std": lambda frames: frames.std(axis=1),
    "min": lambda frames: frames.min(axis=1),
    "max": lambda frames: frames.max(axis=1),
    "median": lambda frames: np.median(frames, axis=1),
    "skew": lambda frames: np.nan_to_num(scipy.stats.skew(frames, axis=1)),
    "kurtosis": lambda frames: np.nan_to_num(scipy.stats.kurtosis(frames, axis=1)),
}


@cache
def _filter_banks(sample_rate: int, n_fft: int, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmax=sample_rate / 2)
    chroma = librosa.filters.chroma(sr=sample_rate, n_fft=n_fft, n_chroma=N_CHROMA)
    return mel.astype(np.float32), chroma.astype(np.float32)


def filter_power(bank: np.ndarray, power: np.ndarray) -> np.ndarray:
    """``bank @ power``, summed by numpy's own loops: the BLAS kernel that ``@`` calls is
    chosen by the processor and rounds the sums differently on another machine."""
    return np.einsum("bf,ft->bt", bank, power)


def frame_feature_names(params: FeatureParams) -> list[str]:
    """Names of the per-frame features, in the order ``frame_features`` stacks them."""
    return [
        "zcr",
        "rms",
        *(f"chroma_{i:02d}" for i in range(N_CHROMA)),
        *(f"logmel_{i:02d}" for i in range(params.n_mels)),
        *(f"mfcc_{i:02d}" for i in range(params.n_mfcc)),
    ]


def seed_feature_names(params: FeatureParams) -> list[str]:
    """Names of the seed set's vector: each frame feature under each statistic."""
    return [f"{name}_{stat}" for stat in params.stats for name in frame_feature_names(params)]


def frame_features(signal: np.ndarray, sample_rate: int, params: FeatureParams) -> np.ndarray:
    """Per-frame features (features x frames) computed from one STFT."""
    if len(signal) < params.n_fft:
        signal = np.pad(signal, (0, params.n_fft - len(signal)))
    spectrum = np.abs(librosa.stft(signal, n_fft=params.n_fft, hop_length=params.hop_length))
    power = np.square(spectrum)
    mel_bank, chroma_bank = _filter_banks(sample_rate, params.n_fft, params.n_mels)
    log_mel = librosa.power_to_db(filter_power(mel_bank, power), ref=1.0, top_db=None)
    mfcc = scipy.fft.dct(log_mel, axis=0, type=2, norm="ortho")[: params.n_mfcc]
    chroma = librosa.util.normalize(filter_power(chroma_bank, power), norm=np.inf, axis=0)
    rms = librosa.feature.rms(S=spectrum, frame_length=params.n_fft)
    zcr = librosa.feature.zero_crossing_rate(
        signal, frame_length=params.n_fft, hop_length=params.hop_length
    )[:, : spectrum.shape[1]]
    return np.vstack([zcr, rms, chroma, log_mel, mfcc]).astype(np.float32)


def seed_features(signal: np.ndarray, sample_rate: int, params: FeatureParams) -> np.ndarray:
    """The seed set's vector, in ``seed_feature_names`` order."""
    frames = frame_features(signal, sample_rate, params)
    return np.concatenate([_STATISTICS[stat](frames) for stat in params.stats]).astype(np.float32)


@cache
def _smile(feature_set: str) -> SmileSet:  # one per process: building it parses its config
    return SmileSet(feature_set)


def set_feature_names(feature_set: FeatureSet, params: FeatureParams) -> list[str]:
    """Column names of one set; openSMILE names carry the set as a prefix."""
    if feature_set == "seed":
        return seed_feature_names(params)
    return [f"{feature_set}.{name}" for name in _smile(feature_set).feature_names]


def set_features(
    feature_set: FeatureSet, signal: np.ndarray, sample_rate: int, params: FeatureParams
) -> np.ndarray:
    """One set's vector for one clip, from its band below ``params.sample_rate / 2``."""
    if params.sample_rate is not None and params.sample_rate < sample_rate:
        signal, sample_rate = resample(signal, sample_rate, params.sample_rate), params.sample_rate
    if feature_set == "seed":
        return seed_features(signal, sample_rate, params)
    return _smile(feature_set).extract(signal, sample_rate)


def feature_names(params: FeatureParams) -> list[str]:
    """Names of the whole vector: the sets of ``features.sets`` in order."""
    return [name for s in params.sets for name in set_feature_names(s, params)]


def clip_features(signal: np.ndarray, sample_rate: int, params: FeatureParams) -> np.ndarray:
    """The whole per-clip vector, in ``feature_names`` order."""
    return np.concatenate([set_features(s, signal, sample_rate, params) for s in params.sets])


@cache
def _frames_bank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> np.ndarray:
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)


def logmel_frames(signal: np.ndarray, sample_rate: int, params: FrameParams) -> np.ndarray:
    """Log-mel power in dB (frames x ``n_mels``), floored ``top_db`` under the clip's loudest
    cell, centre-cropped to ``max_frames`` frames."""
    if len(signal) < params.win_length:
        signal = np.pad(signal, (0, params.win_length - len(signal)))
    spectrum = librosa.stft(
        signal, n_fft=params.n_fft, hop_length=params.hop_length, win_length=params.win_length
    )
    bank = _frames_bank(sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax)
    power = filter_power(bank, np.square(np.abs(spectrum)))  # librosa's melspectrogram, BLAS-free
    frames = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=params.top_db).T
    start = max(0, (len(frames) - params.max_frames) // 2)
    return np.ascontiguousarray(frames[start : start + params.max_frames], dtype=np.float32)
