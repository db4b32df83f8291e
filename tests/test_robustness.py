"""The robustness benchmark never rewards memorised noise: its conditions and the training
recipes share no seed and no room."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import scipy.signal
from conftest import PROJECT_ROOT

from ser.config import load_params
from ser.signal import augment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import robustness

CLIPS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(50)]


def test_the_benchmark_draws_its_noise_from_seeds_training_never_uses():
    params = load_params(PROJECT_ROOT / "params.yaml").augment
    assert robustness.SEED_NAMESPACE != augment.SEED_NAMESPACE
    training = {
        augment.copy_seed(params.seed, sha, copy)
        for sha in CLIPS
        for copy in range(len(params.copies))
    }
    benchmark = {
        robustness.condition_seed(name, sha) for name in robustness.CONDITIONS for sha in CLIPS
    }
    assert training.isdisjoint(benchmark)
    assert training.isdisjoint(seed & 0xFFFFFFFF for seed in benchmark)


def peak_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The highest normalised cross-correlation of two impulse responses at any lag."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return float(np.max(np.abs(scipy.signal.fftconvolve(a, b[::-1]))))


def test_no_benchmark_room_is_a_room_training_hears():
    params = load_params(PROJECT_ROOT / "params.yaml")
    rate = params.audio.sample_rate
    bank = augment.training_rooms(params.augment.seed, tuple(params.augment.rt60), rate)
    for name in robustness.ROOMS:
        response = robustness.room_response(name, rate)
        closest = max(peak_correlation(response, trained) for trained in bank)
        assert closest < 0.9, f"{name} is nearly training room response ({closest:.2f})"
    assert peak_correlation(bank[0], bank[0]) > 0.999
