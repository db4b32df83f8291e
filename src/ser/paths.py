"""Where each stage reads and writes, relative to the repository root (as in dvc.yaml)."""

from pathlib import Path

_QUEUE_WORKSPACE_MARKER = Path(".dvc/tmp/exps")

MANIFEST = Path("data/processed/manifest.parquet")
FEATURES = Path("data/processed/features.parquet")
PREPROCESS_REPORT = Path("reports/preprocess.json")

MODELS_DIR = Path("models")
HYPERPARAMS = MODELS_DIR / "hyperparams.json"
TRAIN_RUN_ID = MODELS_DIR / "mlflow_run.json"
TRAIN_METRICS = Path("reports/train.json")
TRAINING_CURVE = Path("reports/training_curve.csv")

METRICS = Path("reports/metrics.json")
EVALUATION = Path("reports/evaluation.json")
PREDICTIONS = Path("reports/predictions.csv")
CONFUSION_PNG = Path("reports/confusion_matrix.png")

TUNE_DIR = MODELS_DIR / "tune"
TRIALS = TUNE_DIR / "trials.csv"


def workspace_root(start: Path | None = None) -> Path:
    """The workspace whose MLflow store and feature cache this run uses.

    ``dvc exp run --queue`` runs each experiment in a copy under
    ``.dvc/tmp/exps/`` of the workspace; its runs still belong to the workspace.
    """
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    marker = _QUEUE_WORKSPACE_MARKER.parts
    for i in range(len(parts) - len(marker) + 1):
        if parts[i : i + len(marker)] == marker:
            return Path(*parts[:i])
    return here
