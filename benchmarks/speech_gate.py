"""The speech gate's figures: Silero VAD against WebRTC VAD, and the thresholds chosen.

1. Every clip of the shared RAVDESS (speech) and a development set of generated non-speech
   (``ser.signal.nonspeech.random_case``: 25 of each kind at random lengths and levels) go
   through both detectors; their cost per clip is timed.
2. ``speech.threshold`` and ``speech.min_speech_seconds`` are chosen on a grid: the pair
   that refuses the fewest clips of the *training* speakers while accepting none of the
   development set (ties: the larger minimum, for margin).
3. That pair is judged on what it was not chosen on: the validation and test speakers,
   and the issue's 18 named non-speech inputs, also written as files in other formats
   (6 channels, 8 kHz stereo, 24-bit, 96 kHz, Ogg) and read back as ``ser predict`` reads them.

Writes ``--out`` (.md and .json); nothing else is written.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
import webrtcvad
from pipeline_speed import SHARED_RAVDESS, machine

from ser.config import load_params
from ser.corpus.manifest import scan
from ser.corpus.split import assign_splits
from ser.ops.atomic import write_json, write_with
from ser.signal.audio import decode, downmix, remove_dc, resample
from ser.signal.nonspeech import KINDS, named_cases, random_case
from ser.signal.speech import (
    VAD_LEVEL_DBFS,
    VAD_RATE,
    WINDOW_SECONDS,
    at_level,
    speech_probabilities,
)

log = logging.getLogger("benchmark")
ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
MIN_SECONDS = (0.032, 0.064, 0.1, 0.15, 0.2, 0.3)
DEV_PER_KIND, DEV_SEED = 25, 12345
WEBRTC_MODE, WEBRTC_FRAME = 3, 480  # the strictest mode, 30 ms frames at 16 kHz


def at_vad_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    return resample(remove_dc(downmix(samples).astype(np.float32)), rate, VAD_RATE)


def webrtc_ratio(signal: np.ndarray) -> float:
    """Share of 30 ms frames WebRTC VAD (mode 3) calls speech."""
    vad = webrtcvad.Vad(WEBRTC_MODE)
    pcm = (np.clip(signal, -1, 1) * 32767).astype("<i2")
    frames = [
        pcm[i : i + WEBRTC_FRAME].tobytes()
        for i in range(0, len(pcm) - WEBRTC_FRAME + 1, WEBRTC_FRAME)
    ]
    return float(np.mean([vad.is_speech(f, VAD_RATE) for f in frames])) if frames else 0.0


def measure(signal: np.ndarray) -> dict[str, object]:
    """Silero's window probabilities (of the signal at the gate's level) and WebRTC's speech
    ratio of a 16 kHz signal, timed."""
    started = time.perf_counter()
    probabilities = speech_probabilities(at_level(signal, VAD_LEVEL_DBFS))
    silero_ms = 1000 * (time.perf_counter() - started)
    started = time.perf_counter()
    ratio = webrtc_ratio(signal)
    webrtc_ms = 1000 * (time.perf_counter() - started)
    return {
        "probabilities": probabilities,
        "silero_ms": silero_ms,
        "webrtc_ratio": ratio,
        "webrtc_ms": webrtc_ms,
        "seconds": len(signal) / VAD_RATE,
    }


def speech_seconds(item: dict, threshold: float) -> float:
    return float(np.sum(item["probabilities"] >= threshold)) * WINDOW_SECONDS


def rejected(items: list[dict], threshold: float, minimum: float) -> int:
    return int(sum(speech_seconds(item, threshold) < minimum - 1e-9 for item in items))


def as_file(signal: np.ndarray, rate: int, channels: int, audio_format: str, subtype: str) -> bytes:
    """The bytes of a file of ``signal`` resampled to ``rate`` on ``channels`` channels."""
    resampled = resample(signal.astype(np.float32), 16_000, rate)
    data = np.stack([resampled] * channels, axis=1) if channels > 1 else resampled
    buffer = io.BytesIO()
    soundfile.write(buffer, data, rate, format=audio_format, subtype=subtype)
    return buffer.getvalue()


FORMATS = {
    "WAV 16 kHz mono": (16_000, 1, "WAV", "PCM_16"),
    "WAV 6 channels": (16_000, 6, "WAV", "PCM_16"),
    "WAV 8 kHz stereo": (8_000, 2, "WAV", "PCM_16"),
    "WAV 24-bit": (16_000, 1, "WAV", "PCM_24"),
    "FLAC 96 kHz": (96_000, 1, "FLAC", "PCM_24"),
    "Ogg Vorbis": (44_100, 1, "OGG", "VORBIS"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHARED_RAVDESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/speech_gate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    info, params = machine(), load_params(ROOT / "params.yaml")

    manifest, _ = scan(args.corpus, ["ravdess"])
    manifest["split"] = assign_splits(manifest, params.split)
    speech = {split: [] for split in ("train", "val", "test")}
    for row in manifest.itertuples():
        samples, rate = decode(Path(row.path))
        speech[row.split].append(measure(at_vad_rate(samples, rate)))
    log.info("%d RAVDESS clips measured", len(manifest))
    rng = np.random.default_rng(DEV_SEED)
    development = [
        {"kind": kind, **measure(random_case(kind, rng))}
        for _ in range(DEV_PER_KIND)
        for kind in KINDS
    ]
    named = {}
    for (name, signal), (form, spec) in itertools.product(named_cases().items(), FORMATS.items()):
        samples, rate = decode(as_file(signal, *spec))
        named[f"{name} ({form})"] = measure(at_vad_rate(samples, rate))

    train = speech["train"]
    grid = [
        {
            "threshold": t,
            "min_speech_seconds": s,
            "train_rejected": rejected(train, t, s),
            "dev_accepted": len(development) - rejected(development, t, s),
        }
        for t, s in itertools.product(THRESHOLDS, MIN_SECONDS)
    ]
    safe = [g for g in grid if g["dev_accepted"] == 0]
    chosen = min(safe, key=lambda g: (g["train_rejected"], -g["min_speech_seconds"]))
    t, s = chosen["threshold"], chosen["min_speech_seconds"]
    everyone = [item for items in speech.values() for item in items]
    result = {
        "chosen": {"threshold": t, "min_speech_seconds": s},
        "params": params.speech.model_dump(),
        "false_reject": {
            split: {"rejected": rejected(items, t, s), "clips": len(items)}
            for split, items in {**speech, "all": everyone}.items()
        },
        "named_non_speech_accepted": sorted(
            name for name, item in named.items() if speech_seconds(item, t) >= s
        ),
        "named_non_speech": len(named),
        "webrtc": {
            # WebRTC has no probability: its best rule is a share of speech frames; the
            # share of the named non-speech inputs at or above each RAVDESS percentile
            f"percentile {q}": {
                "ratio": float(np.percentile([i["webrtc_ratio"] for i in everyone], q)),
                "named_accepted": sum(
                    item["webrtc_ratio"] >= np.percentile([i["webrtc_ratio"] for i in everyone], q)
                    for item in named.values()
                ),
            }
            for q in (1, 5)
        },
        "cost_ms_per_clip": {
            "silero": float(np.mean([i["silero_ms"] for i in everyone])),
            "webrtc": float(np.mean([i["webrtc_ms"] for i in everyone])),
            "clip_seconds": float(np.mean([i["seconds"] for i in everyone])),
        },
        "grid": grid,
    }
    lines = [
        f"Chosen on the training speakers and the development set: speech.threshold {t}, "
        f"speech.min_speech_seconds {s}.",
        "",
        "| speakers | clips refused (no speech) |",
        "|---|---|",
        *(
            f"| {split} | {v['rejected']} of {v['clips']} ({v['rejected'] / v['clips']:.2%}) |"
            for split, v in result["false_reject"].items()
        ),
        "",
        f"Named non-speech inputs accepted: {len(result['named_non_speech_accepted'])} of "
        f"{len(named)} {result['named_non_speech_accepted']}.",
        f"WebRTC VAD (mode 3) at the 1st percentile of the speech clips' ratio accepts "
        f"{result['webrtc']['percentile 1']['named_accepted']} of "
        f"{len(named)} named non-speech inputs.",
        f"Cost per clip (mean {result['cost_ms_per_clip']['clip_seconds']:.1f} s): Silero "
        f"{result['cost_ms_per_clip']['silero']:.1f} ms, WebRTC "
        f"{result['cost_ms_per_clip']['webrtc']:.1f} ms.",
        "",
        ", ".join(f"{key}: {value}" for key, value in info.items()),
    ]
    plain = json.loads(json.dumps(result, default=lambda value: value.item()))  # numpy scalars
    write_json(args.out.with_suffix(".json"), {"machine": info, "result": plain})
    text = "\n".join(lines) + "\n"
    write_with(args.out.with_suffix(".md"), lambda path: path.write_text(text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
