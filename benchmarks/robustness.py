"""Robustness to recording conditions (``make benchmark-robustness``): the accuracy
benchmark's speaker folds, each fold's test clips scored clean and as they would sound
recorded otherwise.

Every kind is trained exactly as in ``benchmarks/accuracy.py`` (training folds, choices on
the validation fold, the refit); its test fold is then scored once per condition
(``CONDITIONS``): white, pink and babble noise at 20, 10 and 5 dB SNR (babble: four other
clips of the same test fold, never a training speaker), a telephone channel (300-3,400 Hz,
8 kHz, mu-law), three simulated rooms (RT60 0.3, 0.6, 0.9 s), the clip 30 and 45 dB quieter
stored at 16 bits, and clipping 12 dB over full scale. A condition is applied to the
decoded recording, which then goes through the pipeline's own conditioning and features,
as ``ser predict`` would take such a file; a clip it refuses (the speech gate's
``no_speech`` included) counts as wrong.

The conditions' generators, seeds (``SEED_NAMESPACE``) and rooms are the benchmark's own:
training augmentation (``ser.signal.augment``) uses another library, another namespace and
random rooms, so the numbers do not reward memorised noise.

Writes ``results/robustness.{md,json}`` (rows: kinds; columns: conditions; UAR mean ± sd
over folds) and the clean scores as the kinds' rows of ``results/accuracy.{md,json}``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from accuracy import (
    aggregate,
    feature_table,
    fit_fold,
    previous_rows,
    save,
    settings,
    speaker_folds,
)
from pipeline_speed import SHARED_RAVDESS, machine

from ser import EMOTIONS
from ser.config import Params, load_params
from ser.corpus.manifest import scan
from ser.metrics import uar
from ser.models import MODULE_OF
from ser.models.base import Model
from ser.models.fusion import Fusion
from ser.ops.atomic import write_json, write_with
from ser.signal import conditions
from ser.signal.audio import BadAudio, condition, decode, downmix
from ser.signal.features import clip_features, feature_names, logmel_frames
from ser.signal.speech import describe, no_speech_reason
from ser.table.store import FRAMES_COLUMN

log = logging.getLogger("benchmark")

ROOT = Path(__file__).resolve().parents[1]
SEED_NAMESPACE = "ser.benchmark.robustness"
BABBLE_TALKERS = 4
ROOMS = {  # the benchmark's rooms, in metres: none of them is a room training draws
    "room 0.3 s": conditions.Room((6.2, 4.7, 2.9), 0.3, (2.1, 3.3, 1.6), (4.4, 1.9, 1.2)),
    "room 0.6 s": conditions.Room((7.9, 5.6, 3.1), 0.6, (1.7, 2.2, 1.7), (5.3, 3.8, 1.1)),
    "room 0.9 s": conditions.Room((10.3, 7.4, 3.6), 0.9, (3.1, 5.2, 1.5), (7.6, 2.4, 1.3)),
}
NOISES = {"white": conditions.white_noise, "pink": conditions.pink_noise}
CONDITIONS = (
    "clean",
    *(f"{kind} {snr} dB" for kind in ("white", "pink", "babble") for snr in (20, 10, 5)),
    "telephone",
    *ROOMS,
    "level -30 dB",
    "level -45 dB",
    "clipping +12 dB",
)


def condition_seed(name: str, clip_sha256: str) -> int:
    """The seed of one condition for one clip, from the benchmark's own namespace."""
    key = f"{SEED_NAMESPACE}:{name}:{clip_sha256}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def condition_rng(name: str, clip_sha256: str) -> np.random.Generator:
    """The generator of one condition for one clip."""
    return np.random.default_rng(condition_seed(name, clip_sha256))


def recorded(
    name: str, signal: np.ndarray, rate: int, sha: str, talkers: list[np.ndarray]
) -> tuple[np.ndarray, int]:
    """``signal`` as condition ``name`` would have recorded it, with its sample rate."""
    if name == "clean":
        return signal, rate
    if name == "telephone":
        return conditions.telephone(signal, rate)
    if name in ROOMS:
        return conditions.reverberate(signal, room_response(name, rate)), rate
    kind, amount, _ = name.split(" ")
    value = float(amount.lstrip("+"))
    if kind == "level":
        return conditions.quieter(signal, value), rate
    if kind == "clipping":
        return conditions.clipped(signal, value), rate
    rng = condition_rng(name, sha)
    noise = (
        conditions.babble(talkers, len(signal), rng)
        if kind == "babble"
        else NOISES[kind](len(signal), rng)
    )
    return conditions.mix_at_snr(signal, noise, value), rate


_RESPONSES: dict[tuple[str, int], np.ndarray] = {}


def room_response(name: str, rate: int) -> np.ndarray:
    """Each room's impulse response, computed once per process and rate."""
    if (name, rate) not in _RESPONSES:
        _RESPONSES[name, rate] = conditions.impulse_response(ROOMS[name], rate)
    return _RESPONSES[name, rate]


@dataclass(frozen=True)
class TestClip:
    path: str
    sha256: str
    talkers: tuple[str, ...]  # other clips of its test fold, mixed in as babble


def inputs_under_conditions(clip: TestClip, params: Params) -> dict[str, tuple | str]:
    """For each condition: the clip's feature vector and frames as ``ser predict`` computes
    them from that recording, or why it refuses it (the speech gate included)."""

    def mono(path: str) -> tuple[np.ndarray, int]:
        samples, rate = decode(Path(path))
        return downmix(samples), rate

    signal, rate = mono(clip.path)
    talkers = [mono(path)[0] for path in clip.talkers]
    found: dict[str, tuple | str] = {}
    for name in CONDITIONS:
        audio, audio_rate = recorded(name, signal, rate, clip.sha256, talkers)
        stats = describe(audio, audio_rate, params.speech.threshold)
        if reason := no_speech_reason(stats, params.speech):
            found[name] = f"no speech: {reason}"
            continue
        try:
            conditioned = condition(audio, audio_rate, params.audio)
        except BadAudio as error:
            found[name] = str(error)
            continue
        target = params.audio.sample_rate
        found[name] = (
            clip_features(conditioned, target, params.features),
            logmel_frames(conditioned, target, params.frames),
        )
    return found


def test_clips(manifest: pd.DataFrame, fold: list[str]) -> list[TestClip]:
    """The fold's clips, each with ``BABBLE_TALKERS`` clips of other speakers of the fold."""
    rows = manifest[manifest["speaker"].isin(fold)].reset_index(drop=True)
    clips = []
    for row in rows.itertuples():
        others = rows[rows["speaker"] != row.speaker]
        rng = condition_rng("babble talkers", row.sha256)
        chosen = rng.choice(len(others), size=min(BABBLE_TALKERS, len(others)), replace=False)
        clips.append(TestClip(row.path, row.sha256, tuple(others["path"].iloc[sorted(chosen)])))
    return clips


def scores_under_conditions(
    model, clips: list[TestClip], labels: list[str], inputs: list[dict], columns: list[str]
) -> dict[str, float]:
    """UAR of ``model`` on the clips under each condition; a refused clip counts as wrong."""
    scores = {}
    for name in CONDITIONS:
        usable = [i for i, found in enumerate(inputs) if not isinstance(found[name], str)]
        predicted = ["(refused)"] * len(clips)
        if usable:
            values = np.vstack([inputs[i][name][0] for i in usable])
            rows = pd.DataFrame(values, columns=columns).assign(
                **{FRAMES_COLUMN: [inputs[i][name][1] for i in usable]}
            )
            for i, row in zip(usable, model.predict_proba(rows).argmax(axis=1), strict=True):
                predicted[i] = EMOTIONS[row]
        scores[name] = uar(labels, predicted)
    return scores


def scored_models(kind: str, model: Model) -> dict[str, Model]:
    """The models a fold scores: the kind's, and a fusion's members, each of which is the
    member's kind exactly as it trains alone (same params, seeds and rows)."""
    if isinstance(model, Fusion):
        return {kind: model, "spectrogram_cnn": model.network, "logreg": model.linear}
    return {kind: model}


def member_row(
    fusion: dict[str, object], member: str, params: Params, corpus: Path, folds: int
) -> dict[str, object]:
    """An accuracy row for a fusion's member: its kind, trained exactly as alone."""
    mean, std = fusion["members_uar"][member]
    return {
        "features": fusion["features"],
        "kind": member,
        "member_of": fusion["kind"],
        "uar_mean": mean,
        "uar_std": std,
        "folds": [{"fold": f["fold"], "uar": f["members_uar"][member]} for f in fusion["folds"]],
        "settings": settings(params, corpus, folds, member),
        "measured": fusion["measured"],
    }


def markdown(rows: list[dict[str, object]], info: dict[str, object]) -> str:
    header = "| model | " + " | ".join(CONDITIONS) + " |"
    lines = [header, "|---" * (len(CONDITIONS) + 1) + "|"]
    for row in rows:
        cells = [
            f"{100 * mean:.1f} ± {100 * sd:.1f}"
            for mean, sd in (row["conditions"][name] for name in CONDITIONS)
        ]
        lines.append(f"| {row['kind']} | " + " | ".join(cells) + " |")
    about = ", ".join(f"{k}: {v}" for k, v in info.items())
    return "\n".join(lines) + f"\n\nUAR % on unseen speakers, mean ± sd over folds. {about}\n"


def save_robustness(
    per_condition: dict[str, dict[str, list[float]]],
    params: Params,
    args: argparse.Namespace,
    info: dict[str, object],
) -> str:
    """Write ``robustness.{json,md}`` from the folds scored so far (``info`` says how many),
    keeping earlier rows of kinds not run now; returns the Markdown table."""
    rows = [
        {
            "kind": kind,
            "conditions": {
                name: [float(np.mean(values)), float(np.std(values))]
                for name, values in conditions_of_kind.items()
            },
            "folds": conditions_of_kind,
            "settings": settings(params, args.corpus, args.folds, kind),
            "measured": machine(),
        }
        for kind, conditions_of_kind in per_condition.items()
    ]
    rows += [
        row
        for row in previous_rows(args.out / "robustness.json", params, args.corpus, args.folds)
        if row["kind"] not in per_condition
    ]
    rows.sort(key=lambda row: list(MODULE_OF).index(row["kind"]))
    out = args.out / "robustness"
    text = markdown(rows, info)
    write_json(out.with_suffix(".json"), {"machine": info, "conditions": CONDITIONS, "rows": rows})
    write_with(out.with_suffix(".md"), lambda path: path.write_text(text))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHARED_RAVDESS, help="corpus folder")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--kinds", nargs="+", choices=tuple(MODULE_OF), default=list(MODULE_OF))
    parser.add_argument("--workers", type=int, default=2, help="processes that make the inputs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for noisy in ("mlflow", "absl", "numba", "ser.models.fitting", "ser.models.network"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    info = machine() | {"corpus": str(args.corpus), "folds": args.folds}
    params = load_params(args.params)
    manifest, _ = scan(args.corpus, params.data.corpora)
    folds = speaker_folds(manifest, args.folds, params.split.seed)
    table = feature_table(manifest, params, folds)
    columns = feature_names(params.features)

    per_kind: dict[str, list] = {kind: [] for kind in args.kinds}
    per_condition: dict[str, dict[str, list[float]]] = {}
    for index, fold in enumerate(folds):
        clips = test_clips(manifest, fold)
        labels = manifest.set_index("path").loc[[c.path for c in clips], "label"].tolist()
        with ProcessPoolExecutor(args.workers) as pool:
            inputs = list(pool.map(partial(inputs_under_conditions, params=params), clips))
        for kind in args.kinds:
            result, model = fit_fold(table, columns, folds, index, kind, params)
            per_kind[kind].append(result)
            for name, scored in scored_models(kind, model).items():
                scores = scores_under_conditions(scored, clips, labels, inputs, columns)
                for condition_name, value in scores.items():
                    per_condition.setdefault(name, {c: [] for c in CONDITIONS})[
                        condition_name
                    ].append(value)
                log.info("fold %d %s: %s", index, name, {k: round(v, 3) for k, v in scores.items()})
        # a long run leaves what it has: the folds scored so far, said as such
        save_robustness(per_condition, params, args, info | {"folds_scored": index + 1})

    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    text = save_robustness(per_condition, params, args, info)
    accuracy = args.out / "accuracy"
    fresh = [
        aggregate("+".join(params.features.sets), kind, results)
        | {"settings": settings(params, args.corpus, args.folds, kind), "measured": machine()}
        for kind, results in per_kind.items()
    ]
    fresh += [
        member_row(row, member, params, args.corpus, args.folds)
        for row in fresh
        for member in row["members_uar"]
        if member not in per_kind
    ]
    kept = [
        row
        for row in previous_rows(accuracy.with_suffix(".json"), params, args.corpus, args.folds)
        if row["kind"] not in per_kind
    ]
    save(accuracy, kept + fresh, info)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
