"""openSMILE with the next extractor built in the background gives the library's values."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
from conftest import noise, tone

from ser.signal.smile import SmileSet


def library_values(feature_set: str, signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """What the library's own ``process_signal`` gives with the set's configuration."""
    smile = SmileSet(feature_set).smile
    return smile.process_signal(signal, sample_rate).to_numpy(dtype=np.float32)[0]


@pytest.mark.parametrize("feature_set", ["egemaps", "compare"])
def test_values_are_process_signals_clip_after_clip_and_rate_after_rate(feature_set):
    smile = SmileSet(feature_set)
    clips = [
        (tone(0.8, 220) + noise(0.8, 0.02), 16_000),
        (tone(0.5, 180, sample_rate=8000) + noise(0.5, 0.05, 1, 8000), 8000),
        ((tone(1.2, 300) + noise(1.2, 0.01, 2)).astype(np.float64), 16_000),
    ]
    for _ in range(2):  # the second round takes extractors built in the background
        for signal, rate in clips:
            np.testing.assert_array_equal(
                smile.extract(signal, rate), library_values(feature_set, signal, rate)
            )


def test_a_clip_too_short_for_the_windows_gives_nans_as_the_library_does():
    signal = noise(0.01, 0.1)
    with pytest.warns(UserWarning, match="too short"):
        expected = library_values("compare", signal, 16_000)
    assert np.isnan(expected).all()
    assert np.isnan(SmileSet("compare").extract(signal, 16_000)).all()


def _extract_in_child(smile: SmileSet, signal: np.ndarray, queue) -> None:
    queue.put(smile.extract(signal, 16_000))


def test_a_forked_child_builds_its_own_extractors():
    """A child forked with an extractor being built in the parent does not wait for it."""
    smile = SmileSet("egemaps")
    signal = tone(0.6, 200) + noise(0.6, 0.02)
    parent = smile.extract(signal, 16_000)  # and the next one is being built
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_extract_in_child, args=(smile, signal, queue))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(queue.get(timeout=5), parent)
