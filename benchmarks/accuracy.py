"""Speaker-independent accuracy: grouped k-fold cross-validation by speaker (``make benchmark-accuracy``).

The speakers are dealt into ``--folds`` folds, both sexes in each. Fold i is the test
fold, touched once to score; fold i+1 holds the validation speakers, which make every
choice (early stopping and the learning-rate schedule of the seed CNN, C of the linear
models, the fusion weight, the temperature that calibrates the probabilities); the
remaining folds train. Augmented copies are made for training clips only, as in the
pipeline. Every (feature set, model kind) pair of the grid is trained with params.yaml as it is (``train.refit_on_val`` included), so the
row of the default kind and feature set is the default pipeline. The fusion row also
scores its two members alone. Each row also has the calibration a user would meet: the
test ECE before and after the temperature train fits on the validation speakers, pooled over
every test clip, beside what a calibrated model would score on as many clips by chance, and,
with ``train.refit_on_val``, the UAR and ECE of the model validation chose before the
refit. No tuning, no test-speaker statistics.

Prints a table and writes it, with per-fold numbers, to ``--out`` (.md and .json) after
each pair. Rows of an earlier run with the same settings (params, corpus, folds) are
kept, so a grid can be measured in parts: ``--sets compare --kinds seed_cnn`` re-measures one
pair and leaves the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pipeline_speed import SHARED_RAVDESS, machine
from sklearn.model_selection import StratifiedGroupKFold

from ser import EMOTIONS, ORIGINAL
from ser.config import Params, load_params
from ser.corpus.manifest import scan
from ser.metrics import reliability, summary, uar
from ser.models import MODULE_OF, kind_named
from ser.models.base import CLIP_INPUT, FRAMES_INPUT, Model, label_indices
from ser.models.fitting import Trained, train_model
from ser.models.fusion import Fusion
from ser.ops.atomic import write_json, write_with
from ser.signal.features import feature_names
from ser.table.extract import TALKER_POOL, extract_features
from ser.table.store import FRAMES_COLUMN, META_COLUMNS

log = logging.getLogger("benchmark")

ROOT = Path(__file__).resolve().parents[1]
KINDS = tuple(MODULE_OF)
SETS = ("seed", "egemaps", "compare")


@dataclass
class FoldResult:
    fold: int
    test_speakers: list[str]
    val_speakers: list[str]
    uar: float
    accuracy: float
    macro_f1: float
    val_uar: float
    fit_seconds: float
    predict_ms_per_clip: float
    members_uar: dict[str, float]  # a fusion's members scored alone on the same test fold
    calibration: dict[str, object]  # see calibration_of


Bins = list[list[float]]
"""Per confidence bin of :func:`ser.metrics.reliability`: clips, sum of confidences, right
answers; sums, so that the bins of the folds add up to those of every test clip."""

CHANCE_DRAWS = 2000
"""Random draws that :func:`chance_ece` averages over."""


def bin_sums(probabilities: np.ndarray, labels: np.ndarray) -> Bins:
    table = reliability(probabilities, labels).fillna(0.0)
    return [
        [int(n), float(n * confidence), float(n * accuracy)]
        for n, confidence, accuracy in table[["clips", "confidence", "accuracy"]].to_numpy()
    ]


def ece_of(bins: Bins) -> float:
    """The expected calibration error of the clips behind ``bins``."""
    clips = sum(n for n, _, _ in bins)
    return sum(abs(confidence - right) for _, confidence, right in bins) / max(1, clips)


def chance_ece(bins: Bins, seed: int = 0) -> float:
    """The mean ECE of a perfectly calibrated model at the confidences of ``bins`` (each
    bin's clips right with its mean confidence, drawn at random): the ECE that as many clips
    show by chance alone."""
    rng = np.random.default_rng(seed)
    counts = np.array([n for n, _, _ in bins], dtype=np.int64)
    confidence = np.array([c / n if n else 0.0 for n, c, _ in bins])
    right = rng.binomial(counts, confidence, size=(CHANCE_DRAWS, len(bins)))
    return float(np.abs(right - counts * confidence).sum(axis=1).mean() / max(1, counts.sum()))


def calibration_of(
    trained: Trained, test_rows: pd.DataFrame, probabilities: np.ndarray
) -> dict[str, object]:
    """The temperature train would save, the test ECE before and after it, and (after a
    refit) the UAR and calibration of the model validation chose, which T was fitted on."""
    truth = label_indices(test_rows)
    calibration = trained.calibration
    scores: dict[str, object] = {
        "temperature": calibration.temperature,
        "bins_uncalibrated": bin_sums(probabilities, truth),
        "bins": bin_sums(calibration.apply(probabilities), truth),
    }
    if trained.fitted.model is not trained.model:
        chosen = trained.fitted.model.predict_proba(test_rows)
        scores |= {
            "chosen_uar": uar(truth, chosen.argmax(axis=1)),
            "chosen_bins_uncalibrated": bin_sums(chosen, truth),
            "chosen_bins": bin_sums(calibration.apply(chosen), truth),
        }
    return scores


def speaker_folds(manifest: pd.DataFrame, n_folds: int, seed: int) -> list[list[str]]:
    """Speakers dealt into ``n_folds`` groups, each sex spread evenly over them."""
    speakers = manifest.drop_duplicates("speaker")
    if len(speakers) < n_folds + 2:
        raise ValueError(f"{len(speakers)} speakers cannot fill {n_folds} folds plus validation")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    strata = (speakers["corpus"] + "/" + speakers["sex"]).to_numpy()
    return [
        sorted(speakers["speaker"].iloc[test].tolist())
        for _, test in splitter.split(speakers, strata, groups=speakers["speaker"])
    ]


def feature_table(manifest: pd.DataFrame, params: Params, folds: list[list[str]]) -> pd.DataFrame:
    """Features of every clip and of one augmented copy per recipe (used for training only).
    A copy's babble talkers are speakers of its own fold: they train whenever it does."""
    fold_of = {speaker: i for i, fold in enumerate(folds) for speaker in fold}
    pools = manifest["speaker"].map(fold_of)
    extracted = extract_features(manifest.assign(split="train", **{TALKER_POOL: pools}), params)
    log.info(
        "features: %d rows, %d clips extracted in %.0f s, %d failed",
        len(extracted.table),
        extracted.stats.computed_clips,
        extracted.stats.seconds,
        len(extracted.errors),
    )
    return extracted.table.assign(**{FRAMES_COLUMN: extracted.frames})


def fit_fold(
    table: pd.DataFrame,
    columns: list[str],
    folds: list[list[str]],
    index: int,
    kind: str,
    params: Params,
) -> tuple[FoldResult, Model]:
    """Train on the training folds, choose on fold ``index + 1``, score fold ``index`` once;
    return the scores and the model."""
    test, val = folds[index], folds[(index + 1) % len(folds)]
    split = np.where(
        table["speaker"].isin(test), "test", np.where(table["speaker"].isin(val), "val", "train")
    )
    rows = table[[*META_COLUMNS, *columns, FRAMES_COLUMN]].assign(split=split)
    original = rows["augmentation"] == ORIGINAL
    train_rows = rows[rows["split"] == "train"].reset_index(drop=True)
    val_rows = rows[(rows["split"] == "val") & original].reset_index(drop=True)
    test_rows = rows[(rows["split"] == "test") & original].reset_index(drop=True)

    params = params.model_copy(update={"model": params.model.model_copy(update={"kind": kind})})
    started = time.perf_counter()
    trained = train_model(train_rows, val_rows, params)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    probabilities = trained.model.predict_proba(test_rows)
    predict_seconds = time.perf_counter() - started
    scores = summary(test_rows["label"].tolist(), [EMOTIONS[i] for i in probabilities.argmax(1)])
    members = {}
    if isinstance(trained.model, Fusion):
        truth = label_indices(test_rows)
        for name, member in (
            ("spectrogram_cnn", trained.model.network),
            ("logreg", trained.model.linear),
        ):
            members[name] = uar(truth, member.predict_proba(test_rows).argmax(axis=1))
    result = FoldResult(
        index,
        test,
        val,
        scores["uar"],
        scores["accuracy"],
        scores["macro_f1"],
        trained.val["uar"],
        fit_seconds,
        1000 * predict_seconds / len(test_rows),
        members,
        calibration_of(trained, test_rows, probabilities),
    )
    return result, trained.model


def run_fold(
    table: pd.DataFrame,
    columns: list[str],
    folds: list[list[str]],
    index: int,
    kind: str,
    params: Params,
) -> FoldResult:
    """:func:`fit_fold`'s scores."""
    return fit_fold(table, columns, folds, index, kind, params)[0]


def aggregate(feature_set: str, kind: str, results: list[FoldResult]) -> dict[str, object]:
    def column(name: str) -> np.ndarray:
        return np.array([getattr(r, name) for r in results])

    return {
        "features": feature_set,
        "kind": kind,
        "uar_mean": float(column("uar").mean()),
        "uar_std": float(column("uar").std()),
        "accuracy": float(column("accuracy").mean()),
        "macro_f1": float(column("macro_f1").mean()),
        "val_uar": float(column("val_uar").mean()),
        "fit_seconds": float(column("fit_seconds").mean()),
        "predict_ms_per_clip": float(column("predict_ms_per_clip").mean()),
        "members_uar": {
            name: [float(np.mean(scores)), float(np.std(scores))]
            for name in results[0].members_uar
            for scores in [[r.members_uar[name] for r in results]]
        },
        "calibration": pooled_calibration(results),
        "folds": [asdict(r) for r in results],
    }


def pooled_calibration(results: list[FoldResult]) -> dict[str, float]:
    """ECE over every test clip of the folds (each fold calibrated by its own temperature)
    and its mean over single folds, each beside the ECE that chance alone gives as many
    clips, and the chosen model's figures."""

    def pooled(key: str) -> Bins:
        return np.sum([r.calibration[key] for r in results], axis=0).tolist()

    scores = {
        "temperature": float(np.mean([r.calibration["temperature"] for r in results])),
        "ece_uncalibrated": ece_of(pooled("bins_uncalibrated")),
        "ece": ece_of(pooled("bins")),
        "ece_by_chance": chance_ece(pooled("bins")),
        "ece_fold_mean": float(np.mean([ece_of(r.calibration["bins"]) for r in results])),
        "ece_fold_by_chance": float(np.mean([chance_ece(r.calibration["bins"]) for r in results])),
    }
    if all("chosen_uar" in r.calibration for r in results):
        chosen_uar = [r.calibration["chosen_uar"] for r in results]
        scores |= {
            "chosen_uar_mean": float(np.mean(chosen_uar)),
            "chosen_uar_std": float(np.std(chosen_uar)),
            "chosen_ece_uncalibrated": ece_of(pooled("chosen_bins_uncalibrated")),
            "chosen_ece": ece_of(pooled("chosen_bins")),
        }
    return scores


def markdown(rows: list[dict[str, object]], info: dict[str, object]) -> str:
    lines = [
        "| features | model | UAR (mean ± std) | accuracy | macro-F1 | val UAR "
        "| fit s / fold | predict ms / clip |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(row: dict[str, object], key: str, template: str) -> str:
        """A row's value, or blank where a row lacks it (a fusion member's own fit)."""
        return template.format(row[key]) if row.get(key) is not None else ""

    for r in rows:
        kind = f"{r['kind']} (member of {r['member_of']})" if r.get("member_of") else r["kind"]
        lines.append(
            f"| {r['features']} | {kind} | {100 * r['uar_mean']:.1f} ± "
            f"{100 * r['uar_std']:.1f} % | {cell(r, 'accuracy', '{:.1%}')} | "
            f"{cell(r, 'macro_f1', '{:.1%}')} | {cell(r, 'val_uar', '{:.1%}')} | "
            f"{cell(r, 'fit_seconds', '{:.0f}')} | {cell(r, 'predict_ms_per_clip', '{:.2f}')} |"
        )
    for r in rows:
        for name, (mean, std) in r.get("members_uar", {}).items():
            lines.append(
                f"\n{r['kind']} on {r['features']}: its member {name} alone scored "
                f"{100 * mean:.1f} ± {100 * std:.1f} % UAR on the same test folds."
            )
    for r in rows:
        if "calibration" in r:
            lines.append(calibration_line(r))
    about = ", ".join(f"{k}: {v}" for k, v in info.items())
    return "\n".join(lines) + f"\n\n{about}\n"


def calibration_line(row: dict[str, object]) -> str:
    """A row's calibration in a sentence."""
    c = row["calibration"]
    clips = sum(n for fold in row["folds"] for n, _, _ in fold["calibration"]["bins"])
    line = (
        f"\n{row['kind']} on {row['features']}: test ECE {c['ece_uncalibrated']:.3f} before, "
        f"{c['ece']:.3f} after the temperature fitted on each fold's validation speakers "
        f"(mean T {c['temperature']:.2f}), over {clips} test clips, where a perfectly "
        f"calibrated model scores {c['ece_by_chance']:.3f} by chance; on one fold's test "
        f"clips {c['ece_fold_mean']:.3f} after T on average ({c['ece_fold_by_chance']:.3f} "
        "by chance)."
    )
    if "chosen_uar_mean" in c:
        line += (
            f" The model validation chose, before the refit: UAR "
            f"{100 * c['chosen_uar_mean']:.1f} ± {100 * c['chosen_uar_std']:.1f} %, ECE "
            f"{c['chosen_ece_uncalibrated']:.3f} before and {c['chosen_ece']:.3f} after T."
        )
    return line


MEMBER_SECTIONS = {"fusion": ("spectrogram_cnn", "linear")}


def settings(params: Params, corpus: Path, folds: int, kind: str) -> dict[str, object]:
    """What the numbers of a row of ``kind`` depend on besides its feature set."""
    registered = kind_named(kind)
    sections = {"split": {"seed"}, "audio": True, "augment": True, "train": True}
    sections |= {name: True for name in (registered.section, *MEMBER_SECTIONS.get(kind, ()))}
    if CLIP_INPUT in registered.inputs:
        sections |= {"features": True, "preprocessing": True}
    if FRAMES_INPUT in registered.inputs:
        sections |= {"frames": True}
    knobs = params.model_dump(
        mode="json", include=sections, exclude={"features": {"sets", "workers", "cache_dir"}}
    )
    return {"corpus": str(corpus.resolve()), "folds": folds, "params": knobs}


def previous_rows(path: Path, params: Params, corpus: Path, folds: int) -> list[dict[str, object]]:
    """Rows of an earlier run measured with the settings of now (other pairs of the grid)."""
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())["rows"]
    kept = [
        r
        for r in rows
        if r["kind"] in KINDS and r["settings"] == settings(params, corpus, folds, r["kind"])
    ]
    if len(kept) < len(rows):
        log.info("%s: dropped %d row(s) measured with other settings", path, len(rows) - len(kept))
    return kept


def save(out: Path, rows: list[dict[str, object]], info: dict[str, object]) -> str:
    """Write the table (.md) and everything behind it (.json) atomically; return the table."""
    order = {(s, k): i for i, (s, k) in enumerate((s, k) for s in SETS for k in KINDS)}
    rows = sorted(rows, key=lambda r: order.get((r["features"], r["kind"]), len(order)))
    text = markdown(rows, info)
    report = {"machine": info, "rows": rows}
    write_json(out.with_suffix(".json"), report)
    write_with(out.with_suffix(".md"), lambda path: path.write_text(text))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHARED_RAVDESS, help="corpus folder")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "accuracy",
        help="writes <out>.md and <out>.json",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for noisy in ("mlflow", "absl", "numba", "ser.models.fitting", "ser.models.network"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    info = machine() | {"corpus": str(args.corpus), "folds": args.folds}

    params = load_params(args.params)
    params = params.model_copy(
        update={"features": params.features.model_copy(update={"sets": args.sets})}
    )
    manifest, problems = scan(args.corpus, params.data.corpora)
    log.info(
        "%d clips of %d speakers (%d skipped)",
        len(manifest),
        manifest["speaker"].nunique(),
        len(problems),
    )
    folds = speaker_folds(manifest, args.folds, params.split.seed)
    table = feature_table(manifest, params, folds)

    measured = {(s, k) for s in args.sets for k in args.kinds}
    rows = [
        row
        for row in previous_rows(args.out.with_suffix(".json"), params, args.corpus, args.folds)
        if (row["features"], row["kind"]) not in measured
    ]
    for feature_set in args.sets:
        set_params = params.features.model_copy(update={"sets": [feature_set]})
        columns = feature_names(set_params)
        for kind in args.kinds:
            results = []
            for index in range(args.folds):
                results.append(run_fold(table, columns, folds, index, kind, params))
                log.info(
                    "%s %s fold %d: test UAR %.3f (val %.3f, %.0f s)",
                    feature_set,
                    kind,
                    index,
                    results[-1].uar,
                    results[-1].val_uar,
                    results[-1].fit_seconds,
                )
            about = {
                "settings": settings(params, args.corpus, args.folds, kind),
                "measured": machine(),
            }
            rows.append(aggregate(feature_set, kind, results) | about)
            save(args.out, rows, info)  # a long grid keeps what it finished

    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    print("\n" + save(args.out, rows, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
