"""Generated sounds that are not speech: what the speech gate must answer ``no_speech``.

``named_cases`` are the inputs the issue reported labelled with an emotion (noise of three
colours at three levels, mains hum, tones, a chord, a sweep, clicks, a DC offset with a
faint ripple, near-silence, music-like and drum-like sounds, 20 s of noise); the tests and
``benchmarks/speech_gate.py`` judge the gate on them. ``random_case`` draws any kind at
random lengths and levels: the development set the gate's thresholds are chosen on,
apart from the named cases.
"""

from __future__ import annotations

import numpy as np

RATE = 16_000
KINDS = (
    "white",
    "pink",
    "brown",
    "hum",
    "tone",
    "chord",
    "sweep",
    "clicks",
    "dc",
    "near_silence",
    "music",
    "drums",
)
NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def times(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.arange(int(seconds * rate)) / rate


def at_level(signal: np.ndarray, dbfs: float) -> np.ndarray:
    """``signal`` without DC, scaled to an RMS level of ``dbfs``, as float32."""
    centred = signal - signal.mean()
    return (centred * 10 ** (dbfs / 20) / np.sqrt(np.mean(centred**2))).astype(np.float32)


def coloured_noise(samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power falls as 1 / f**exponent: white 0, pink 1, brown 2."""
    spectrum = np.fft.rfft(rng.normal(size=samples))
    frequencies = np.fft.rfftfreq(samples)
    frequencies[0] = frequencies[1]
    return np.fft.irfft(spectrum / frequencies ** (exponent / 2), samples)


def harmonics(frequency: float, t: np.ndarray, count: int) -> np.ndarray:
    """A tone with ``count`` harmonics falling as 1/k."""
    return sum(np.sin(2 * np.pi * frequency * k * t) / k for k in range(1, count + 1))


def music_like(seconds: float, rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    """A melody of plucked harmonic notes, four a second, on a chromatic scale."""
    notes = 220 * 2 ** (rng.integers(0, 12, max(1, int(seconds * 4))) / 12)
    t = times(0.25, rate)
    envelope = np.minimum(1, t / 0.01) * np.exp(-4 * t)
    return np.concatenate([harmonics(f, t, 6) * envelope for f in notes])


def drum_like(seconds: float, rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    """Kick (a falling sine) and snare (a noise burst) in turn, four beats a second."""
    out = np.zeros(int(seconds * rate))
    t = times(0.25, rate)
    kick = np.sin(2 * np.pi * (60 + 100 * np.exp(-30 * t)) * t) * np.exp(-12 * t)
    for beat, start in enumerate(range(0, len(out) - len(t), len(t))):
        hit = kick if beat % 2 == 0 else rng.normal(size=len(t)) * np.exp(-25 * t)
        out[start : start + len(t)] += hit
    return out


def sweep(seconds: float, low: float, high: float) -> np.ndarray:
    """A linear chirp from ``low`` to ``high`` Hz."""
    t = times(seconds)
    return np.sin(2 * np.pi * (low * t + (high - low) / (2 * seconds) * t**2))


def named_cases(seed: int = 0) -> dict[str, np.ndarray]:
    """The issue's no-speech inputs (and brown noise: 18 in all) at 16 kHz, mono float32."""
    rng = np.random.default_rng(seed)
    samples, t = 3 * RATE, times(3)
    cases = {}
    for level in (-20, -40, -60):
        cases[f"white noise {level} dBFS"] = at_level(rng.normal(size=samples), level)
        cases[f"pink noise {level} dBFS"] = at_level(coloured_noise(samples, 1, rng), level)
    cases["brown noise -30 dBFS"] = at_level(coloured_noise(samples, 2, rng), -30)
    cases["50 Hz hum"] = at_level(harmonics(50, t, 4), -25)
    cases["440 Hz tone"] = at_level(np.sin(2 * np.pi * 440 * t), -20)
    cases["1 kHz tone"] = at_level(np.sin(2 * np.pi * 1000 * t), -20)
    cases["C major chord"] = at_level(sum(harmonics(f, t, 4) for f in (261.6, 329.6, 392.0)), -20)
    cases["sweep 100 Hz-8 kHz"] = at_level(sweep(3, 100, 8000), -20)
    clicks = np.zeros(samples)
    clicks[:: RATE // 4] = 0.9
    cases["clicks"] = clicks.astype(np.float32)
    cases["DC offset with a faint ripple"] = (0.3 + 1e-4 * np.sin(2 * np.pi * 50 * t)).astype(
        np.float32
    )
    cases["near-silence"] = (3e-5 * rng.normal(size=samples)).astype(np.float32)
    cases["music-like"] = at_level(music_like(3, rng), -20)
    cases["drum-like"] = at_level(drum_like(3, rng), -20)
    cases["20 s of noise"] = at_level(rng.normal(size=20 * RATE), -25)
    return cases


def random_case(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One sound of ``kind`` (see KINDS), 1 to 8 s long at a random level of -60 to -10 dBFS."""
    seconds = float(rng.uniform(1, 8))
    t, level = times(seconds), float(rng.uniform(-60, -10))
    if kind in NOISE_EXPONENTS:
        return at_level(coloured_noise(len(t), NOISE_EXPONENTS[kind], rng), level)
    if kind == "hum":
        return at_level(harmonics(float(rng.choice([50, 60])), t, int(rng.integers(1, 8))), level)
    if kind == "tone":
        return at_level(np.sin(2 * np.pi * rng.uniform(80, 4000) * t), level)
    if kind == "chord":
        root, count = rng.uniform(100, 500), int(rng.integers(1, 8))
        return at_level(sum(harmonics(root * r, t, count) for r in (1, 1.26, 1.5)), level)
    if kind == "sweep":
        low, high = sorted(rng.uniform(50, 7900, 2))
        return at_level(sweep(seconds, low, high), level)
    if kind == "clicks":
        out = np.zeros(len(t))
        out[rng.integers(0, len(t), int(seconds * rng.uniform(1, 20)))] = rng.uniform(0.1, 1)
        return out.astype(np.float32)
    if kind == "dc":
        ripple = 10 ** (level / 20) * np.sin(2 * np.pi * rng.uniform(20, 200) * t)
        return (rng.uniform(-0.5, 0.5) + ripple).astype(np.float32)
    if kind == "near_silence":
        return (10 ** (rng.uniform(-110, -80) / 20) * rng.normal(size=len(t))).astype(np.float32)
    if kind == "music":
        return at_level(music_like(seconds, rng), level)
    if kind == "drums":
        return at_level(drum_like(seconds, rng), level)
    raise ValueError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
