"""Where each stage reads and writes, relative to the repository root (as in dvc.yaml)."""

import os
from pathlib import Path

MANIFEST = Path("data/processed/manifest.parquet")
FEATURES = Path("data/processed/features.parquet")
FRAMES_FILE = Path("data/processed/frames.npz")
CLIP_STATS = Path("data/processed/clip_stats.parquet")  # what each clip sounds like (speech gate)
PREPROCESS_REPORT = Path("reports/preprocess.json")

TUNING_DIR = Path("tuning")
HYPERPARAMS = TUNING_DIR / "hyperparams.json"
STUDY_DIR = TUNING_DIR / "study"
TRIALS = STUDY_DIR / "trials.csv"

MODELS_DIR = Path("models")  # the train stage's output, whatever the model kind
TRAIN_RUN_ID = Path(".ser/train_run.json")  # which MLflow run evaluate adds to (not tracked)
TRAIN_METRICS = Path("reports/train.json")
TRAINING_CURVE = Path("reports/training_curve.csv")

METRICS = Path("reports/metrics.json")
EVALUATION = Path("reports/evaluation.json")
PREDICTIONS = Path("reports/predictions.csv")
CONFUSION_PNG = Path("reports/confusion_matrix.png")
RELIABILITY = Path("reports/reliability.csv")  # calibration before/after, for dvc plots
RELIABILITY_PNG = Path("reports/reliability.png")

MONITOR_REFERENCE = MODELS_DIR / "monitor_reference.parquet"  # what ser monitor compares with
MONITOR_DIR = Path("reports/monitor")  # ser monitor's HTML report and JSON summary


def workspace_root() -> Path:
    """The workspace whose MLflow store and feature cache this run uses.

    DVC sets ``DVC_ROOT`` for every stage it runs; for queued experiments, which
    run in a temporary copy, it names the workspace the queue belongs to.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
