"""Seeded waveform augmentation of training clips, as recordings off the studio microphone
sound: coloured noise, another talker, a room, a narrow channel, a low-bitrate codec, a
quieter level, clipping, another pitch or tempo (audiomentations; rooms are a bank of
random shoeboxes, image sources by pyroomacoustics and a seeded reverberant tail).

A copy is made from the decoded clip before it is trimmed and normalised, so conditioning
meets the copy as it would meet such a recording. Each recipe (``augment.copies``) chains
the transforms it names, each drawing its parameters from the ranges in ``augment``.
The generators are seeded from the clip's content and the copy's number
(:func:`copy_seed`), so adding clips changes no other clip's copies and every process makes
the same copy.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import scipy.signal

from ser.config import AugmentKind, AugmentParams

SEED_NAMESPACE = "ser.augment"
"""Mixed into every seed, so that no other generator of the project draws the same numbers."""


def copy_seed(seed: int, clip_sha256: str, copy_index: int) -> int:
    """The seed of one copy of one clip: fixed by ``augment.seed``, the content and the copy."""
    key = f"{SEED_NAMESPACE}:{seed}:{clip_sha256}:{copy_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


TRAINING_ROOMS = 24
"""How many rooms the bank holds; each room copy is heard through one of them."""
EARLY_ORDER = 12
"""Reflection order of the image sources. From ``TAIL_START_S`` after the direct sound a
seeded noise tail decaying at the room's RT60 takes over: higher orders cost seconds per
room, and pyroomacoustics' ray tracing cannot be seeded."""
TAIL_START_S = 0.04
LEVEL_WINDOW_S = 0.01


def room_response(
    size: np.ndarray,
    rt60: float,
    talker: np.ndarray,
    microphone: np.ndarray,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A shoebox room's impulse response: its image sources up to ``EARLY_ORDER``, all of
    which arrive complete in the first ``TAIL_START_S``, then exponentially decaying noise
    (-60 dB at ``rt60``) that starts at the level the reflections had there."""
    import pyroomacoustics as pra

    absorption, _ = pra.inverse_sabine(rt60, list(size))
    room = pra.ShoeBox(
        list(size),
        fs=sample_rate,
        materials=pra.Material(absorption),
        max_order=EARLY_ORDER,
        air_absorption=True,
    )
    room.add_source(list(talker))
    room.add_microphone(list(microphone))
    room.compute_rir()
    early = np.asarray(room.rir[0][0], np.float64)
    start = int(np.argmax(np.abs(early)) + TAIL_START_S * sample_rate)
    window = int(LEVEL_WINDOW_S * sample_rate)
    level = np.sqrt(np.mean(early[start - window : start + window] ** 2))
    time = np.arange(int(1.5 * rt60 * sample_rate)) / sample_rate
    tail = rng.standard_normal(len(time)) * np.exp(-6.908 * time / rt60) * level
    return np.concatenate([early[:start], tail]).astype(np.float32)


@cache
def training_rooms(seed: int, rt60: tuple[float, float], sample_rate: int) -> list[np.ndarray]:
    """Impulse responses of random shoebox rooms (3-9 x 3-7 x 2.4-3.5 m) whose reverberation
    times are spread over ``rt60``, with talker and microphone placed at random inside."""
    rng = np.random.default_rng(copy_seed(seed, "rooms", 0))
    responses = []
    for target in np.linspace(*rt60, TRAINING_ROOMS):
        size = rng.uniform([3.0, 3.0, 2.4], [9.0, 7.0, 3.5])
        talker, microphone = rng.uniform(0.5, size - 0.5, (2, 3))
        responses.append(room_response(size, float(target), talker, microphone, sample_rate, rng))
    return responses


class RoomFromBank:
    """An audiomentations-style transform: the clip heard in one room of the bank (chosen
    with the global generator audiomentations seeds), cut to its own length."""

    def __init__(self, params: AugmentParams) -> None:
        self.seed, self.rt60 = params.seed, params.rt60

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        bank = training_rooms(self.seed, self.rt60, sample_rate)
        response = bank[np.random.randint(len(bank))]
        return scipy.signal.fftconvolve(samples, response)[: len(samples)].astype(np.float32)


def _transform(kind: AugmentKind, params: AugmentParams, talkers: Sequence[str]) -> object:
    """The audiomentations transform for one kind of ``params``, always applied (p = 1)."""
    import audiomentations as au

    if kind == "noise":
        low, high = params.noise_snr_db
        return au.AddColorNoise(min_snr_db=low, max_snr_db=high, min_f_decay=-6, max_f_decay=6, p=1)
    if kind == "babble":
        low, high = params.babble_snr_db
        return au.AddBackgroundNoise(talkers, min_snr_db=low, max_snr_db=high, p=1)
    if kind == "room":
        return RoomFromBank(params)
    if kind == "band":
        (low_min, low_max), (high_min, high_max) = params.band_low_hz, params.band_high_hz
        return au.Compose(
            [au.HighPassFilter(low_min, low_max, p=1), au.LowPassFilter(high_min, high_max, p=1)]
        )
    if kind == "codec":
        low, high = params.codec_kbps
        return au.Mp3Compression(low, high, backend="fast-mp3-augment", p=1)
    if kind == "level":
        return au.Gain(*params.level_db, p=1)
    if kind == "clip":
        return au.ClippingDistortion(*params.clip_percentile, p=1)
    if kind == "pitch":
        return au.PitchShift(*params.pitch_semitones, p=1)
    return au.TimeStretch(*params.stretch_rate, leave_length_unchanged=False, p=1)


def recipe_augmenter(
    recipe: Sequence[AugmentKind], params: AugmentParams, talkers: Sequence[str] = ()
) -> Callable[[np.ndarray, int, int], np.ndarray]:
    """``augment(signal, sample_rate, seed)``: the recipe's transforms in order, then the
    copy stored as 16-bit PCM, as a recording is. ``talkers`` are the audio files ``babble``
    mixes in (other training speakers' clips); without any, ``babble`` is left out of the
    recipe (a training split of one speaker has no other talker to mix in)."""
    import audiomentations as au

    kinds = [kind for kind in recipe if kind != "babble" or talkers]
    chain = au.Compose([_transform(kind, params, talkers) for kind in kinds])

    def augment(signal: np.ndarray, sample_rate: int, seed: int) -> np.ndarray:
        random.seed(seed)  # audiomentations draws from both global generators
        np.random.seed(seed)
        copy = chain(samples=np.ascontiguousarray(signal, np.float32), sample_rate=sample_rate)
        return (np.round(np.clip(copy, -1, 1) * 32767) / 32767).astype(np.float32)

    return augment
