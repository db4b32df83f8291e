"""preprocess stage: manifest → speech gate → speaker split → features and frames, with a
report of skipped files."""

from __future__ import annotations

import logging

import mlflow
import pandas as pd

from ser import paths
from ser.config import Params
from ser.corpus.manifest import Problem, scan
from ser.corpus.screen import screen
from ser.corpus.split import SPLITS, SplitError, assign_splits
from ser.ops.atomic import write_json, write_parquet
from ser.ops.tracking import stage_run
from ser.table.extract import extract_features
from ser.table.store import normalise_per_speaker, write_frames

log = logging.getLogger(__name__)


def summarise(manifest: pd.DataFrame, problems: list[Problem]) -> dict[str, object]:
    """Counts per split and the skipped files, for the report and MLflow."""
    by_split = manifest.groupby("split")
    return {
        "clips": len(manifest),
        "speakers": int(manifest["speaker"].nunique()),
        "skipped": len(problems),
        "splits": {
            split: {
                "clips": len(rows),
                "speakers": sorted(rows["speaker"].unique().tolist()),
                "sexes": rows.drop_duplicates("speaker")["sex"].value_counts().to_dict(),
                "labels": rows["label"].value_counts().sort_index().to_dict(),
            }
            for split, rows in by_split
        },
        "problems": [{"path": p.path, "reason": p.reason} for p in problems],
    }


def run(params: Params) -> dict[str, object]:
    """Build manifest and features from ``params.data.raw_dir``; return the report."""
    manifest, problems = scan(params.data.raw_dir, params.data.corpora)
    clip_stats, screened = screen(manifest, params)  # the speech gate: no speech, no training
    problems += screened
    manifest = manifest[~manifest["path"].isin({p.path for p in screened})].reset_index(drop=True)
    if manifest.empty:
        raise SplitError(f"{params.data.raw_dir}: no usable clips ({len(problems)} skipped)")
    manifest["split"] = assign_splits(manifest, params.split)
    extracted = extract_features(manifest, params)
    features, failures, stats = extracted.table, extracted.errors, extracted.stats
    problems += [Problem(path, reason) for path, reason in failures.items()]
    for path, reason in failures.items():
        log.warning("skipping %s: %s", path, reason)
    manifest = manifest[~manifest["path"].isin(failures)].reset_index(drop=True)
    if params.features.speaker_norm == "per_speaker":
        features = normalise_per_speaker(features)
    missing = [s for s in SPLITS if s not in set(manifest["split"])]
    if missing:
        raise SplitError(f"split(s) {missing} have no usable clips left")

    report = summarise(manifest, problems)  # run-specific facts (timing, cache) go to MLflow
    write_parquet(paths.MANIFEST, manifest)
    write_parquet(paths.CLIP_STATS, clip_stats[clip_stats["path"].isin(manifest["path"])])
    write_parquet(paths.FEATURES, features)
    write_frames(paths.FRAMES_FILE, extracted.frames)
    write_json(paths.PREPROCESS_REPORT, report)
    log.info(
        "%d clips of %d speakers, %d feature rows, %d skipped (see %s)",
        report["clips"],
        report["speakers"],
        len(features),
        len(problems),
        paths.PREPROCESS_REPORT,
    )

    with stage_run("preprocess", params):
        mlflow.log_metrics(
            {
                "clips": len(manifest),
                "speakers": report["speakers"],
                "skipped_files": len(problems),
                "feature_rows": len(features),
                "extracted_clips": stats.computed_clips,
                "cached_clips": stats.clips - stats.computed_clips,
                "extraction_seconds": stats.seconds,
                **{f"{s}_clips": int((manifest["split"] == s).sum()) for s in SPLITS},
            }
        )
        mlflow.log_artifact(str(paths.PREPROCESS_REPORT))
    return report
