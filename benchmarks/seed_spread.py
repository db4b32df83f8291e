"""Seed spread of the headline: the pipeline's training repeated with other seeds
(``make benchmark-seeds``).

Reads what ``dvc repro`` left (params.yaml, tuning/hyperparams.json, data/processed/) and
changes only ``train.seed``: the networks' initial weights, batch order, SpecAugment masks
and mixup draws. Each seed's model is trained as the train stage trains it (training
speakers, every choice on validation speakers, the refit on both) and scored once on the
test speakers as evaluate scores it (the test ECE before and after the temperature fitted
on the validation speakers included), so the spread of the test UARs is how far the headline
moves with the luck of training alone. The kernels are pinned as in the stages
(src/ser/ops/kernels.py): the pipeline's own seed gives reports/metrics.json's number again.

Writes each seed's numbers and the mean ± sd to ``--out`` (.json and .md) after every seed;
seeds measured before with the same settings (params, features) are kept, so an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

from ser.ops.kernels import pin_numeric_kernels

log = logging.getLogger("benchmark")

ROOT = Path(__file__).resolve().parents[1]
UNSEEDED = {"train": {"seed"}, "tune": True, "evaluate": True, "quality_gate": True, "mlflow": True}
"""What the seeds' numbers do not depend on: the seed itself, and sections no training reads."""


def settings(params, data: dict[str, str]) -> dict[str, object]:
    """What every seed's numbers depend on besides its seed: the chosen params and the data."""
    return {"params": params.model_dump(mode="json", exclude=UNSEEDED), "data": data}


def data_digest() -> dict[str, str]:
    """SHA-256 of the features and frames that the train stage reads."""
    from ser import paths
    from ser.corpus.manifest import sha256_of

    return {str(path): sha256_of(path) for path in (paths.FEATURES, paths.FRAMES_FILE)}


def train_and_test(params, seed: int, rows) -> dict[str, object]:
    """Train with ``train.seed`` = ``seed`` as the train stage does; score the test speakers
    as evaluate does. ``rows`` maps each split to its rows."""
    from ser import EMOTIONS
    from ser.metrics import expected_calibration_error, summary
    from ser.models.base import label_indices
    from ser.models.fitting import train_model

    seeded = params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})
    started = time.perf_counter()
    trained = train_model(rows["train"], rows["val"], seeded)
    probabilities = trained.model.predict_proba(rows["test"])
    predicted = [EMOTIONS[i] for i in probabilities.argmax(axis=1)]
    test = summary(rows["test"]["label"].tolist(), predicted)
    truth = label_indices(rows["test"])
    return {
        "seed": seed,
        **{f"test_{name}": value for name, value in test.items()},
        "test_ece_uncalibrated": expected_calibration_error(probabilities, truth),
        "test_ece": expected_calibration_error(trained.calibration.apply(probabilities), truth),
        "temperature": trained.calibration.temperature,
        "val_uar": trained.val["uar"],
        "chosen": trained.how,
        "seconds": round(time.perf_counter() - started, 1),
    }


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, least and most of ``values``."""
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def markdown(report: dict[str, object]) -> str:
    """The per-seed table and the spread line, for the README's headline."""
    uar = report["test_uar"]
    lines = [
        f"{report['kind']}, test UAR over {len(report['seeds'])} training seeds: "
        f"**{100 * uar['mean']:.1f} ± {100 * uar['sd']:.1f} %** (mean ± sd; "
        f"{100 * uar['min']:.1f} to {100 * uar['max']:.1f} %); test ECE after the "
        f"temperature {report['test_ece']['mean']:.3f} ± {report['test_ece']['sd']:.3f}",
        "",
        "| seed | test UAR | accuracy | macro-F1 | test ECE before / after T | T | val UAR "
        "| chosen | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["seeds"]:
        chosen = ", ".join(f"{k} {v:g}" for k, v in s["chosen"].items())
        lines.append(
            f"| {s['seed']} | {100 * s['test_uar']:.1f} % | {100 * s['test_accuracy']:.1f} % | "
            f"{100 * s['test_macro_f1']:.1f} % | {s['test_ece_uncalibrated']:.3f} / "
            f"{s['test_ece']:.3f} | {s['temperature']:.2f} | {100 * s['val_uar']:.1f} % | "
            f"{chosen} | {s['seconds']:.0f} |"
        )
    pipeline = report.get("pipeline")
    if pipeline:
        lines += [
            "",
            f"The pipeline's seed {pipeline['seed']}: reports/metrics.json has test UAR "
            f"{100 * pipeline['test_uar']:.1f} %.",
        ]
    about = ", ".join(f"{k}: {v}" for k, v in report["machine"].items())
    return "\n".join(lines) + f"\n\n{about}\n"


def summarised(
    report: dict[str, object], results: list[dict[str, object]], seeds: list[int]
) -> dict[str, object]:
    """``report`` with the seeds' numbers in the order asked for, and their spread."""
    ordered = sorted(results, key=lambda s: seeds.index(s["seed"]))
    return report | {
        "seeds": ordered,
        "test_uar": spread([s["test_uar"] for s in ordered]),
        "test_ece": spread([s["test_ece"] for s in ordered]),
    }


def previous_seeds(path: Path, measured_with: dict[str, object]) -> list[dict[str, object]]:
    """The seeds of an earlier run with the same settings (none after any change)."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    if earlier.get("settings") != measured_with:
        log.info("%s: measured with other settings, starting again", path)
        return []
    return earlier["seeds"]


def save(out: Path, report: dict[str, object]) -> str:
    """Write the report (.json) and its table (.md) atomically; return the table."""
    from ser.ops.atomic import write_json, write_with

    text = markdown(report)
    write_json(out.with_suffix(".json"), report)
    write_with(out.with_suffix(".md"), lambda path: path.write_text(text))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="training seeds (default: train.seed and the next 4)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "seed_spread",
        help="writes <out>.md and <out>.json",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for noisy in ("mlflow", "absl", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    pin_numeric_kernels()  # before numpy loads, below: the train stage's kernels

    from pipeline_speed import machine

    from ser import paths
    from ser.config import load_params
    from ser.models import kind_named
    from ser.models.base import FRAMES_INPUT
    from ser.ops.atomic import read_json
    from ser.stages.train import chosen_params
    from ser.table.store import load_rows, select

    params = chosen_params(load_params(args.params))
    seeds = args.seeds or [params.train.seed + i for i in range(5)]
    kind = kind_named(params.model.kind)
    table = load_rows(with_frames=FRAMES_INPUT in kind.inputs)
    rows = {
        "train": select(table, "train", with_augmented=True),
        "val": select(table, "val"),
        "test": select(table, "test"),
    }
    measured_with = settings(params, data_digest())
    earlier = previous_seeds(args.out.with_suffix(".json"), measured_with)
    results = [s for s in earlier if s["seed"] in seeds]
    report = {"kind": kind.name, "settings": measured_with, "machine": machine()}
    headline = read_json(paths.METRICS).get("test") if paths.METRICS.is_file() else None
    if headline:
        report["pipeline"] = {"seed": params.train.seed, "test_uar": headline["uar"]}
    for seed in seeds:
        if any(s["seed"] == seed for s in results):
            log.info("seed %d: measured before", seed)
            continue
        results.append(train_and_test(params, seed, rows))
        log.info("seed %d: test UAR %.3f", seed, results[-1]["test_uar"])
        save(args.out, summarised(report, results, seeds))  # a long run keeps what it finished
    log.info("\n%s", save(args.out, summarised(report, results, seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
