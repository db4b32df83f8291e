"""The ``ser`` command: one subcommand per pipeline stage, and the commands around them."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ser import paths
from ser.config import DEFAULT_PARAMS, load_params
from ser.errors import SerError
from ser.ops.kernels import pin_numeric_kernels

log = logging.getLogger("ser")

LOG_ENV = "SER_INFERENCE_LOG"  # ser.serve.inference_log.LOG_ENV, without its imports

STAGES = ("preprocess", "tune", "train", "evaluate")
QUIET_LOGGERS = ("mlflow", "alembic", "absl", "h5py", "numba", "matplotlib")


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, what it runs (returning an exit status, None for 0)
    and the arguments it adds to its parser. Heavy modules are imported by ``run``."""

    help: str
    run: Callable[[argparse.Namespace], int | None]
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


def run_stage(args: argparse.Namespace) -> None:
    params = load_params(args.params)  # validated before the stage's heavy imports
    pin_numeric_kernels()  # before numpy loads: the same numbers on any x86-64-v3 machine
    importlib.import_module(f"ser.stages.{args.command}").run(params)


def run_tune(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    pin_numeric_kernels()
    from ser.stages import tune

    if args.worker is None:
        tune.run(params, args.params)
    else:
        tune.run_worker(params, args.worker, args.parent_run_id)


def tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--worker",
        type=int,
        metavar="N",
        help="only run trials as extra worker N of the shared study (writes no outputs)",
    )
    parser.add_argument("--parent-run-id", help="MLflow run to nest trials under")


def check_params(args: argparse.Namespace) -> None:
    load_params(args.params)
    log.info("%s: valid", args.params)


def fetch_data(args: argparse.Namespace) -> None:
    from ser.corpus.fetch import default_source, fetch_corpus

    source = args.source or default_source()
    fetch_corpus(source, load_params(args.params).data.raw_dir, args.name, args.sha256)


def data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        help="corpus folder or zip URL (default: $SER_CORPUS_SOURCE, else the shared "
        "RAVDESS copy when present, else the official RAVDESS speech archive)",
    )
    parser.add_argument(
        "--name", default="ravdess", help="folder under data/raw (default: ravdess)"
    )
    parser.add_argument("--sha256", help="expected SHA-256 of a downloaded archive")


def predict(args: argparse.Namespace) -> int:
    from ser.serve.predict import write_predictions

    destination = None
    if args.log is not None:  # --log alone: $SER_INFERENCE_LOG, else monitor.log of the params
        destination = args.log or os.environ.get(LOG_ENV) or load_params(args.params).monitor.log
    return 1 if write_predictions(args.inputs, args.model, args.json, log_to=destination) else 0


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE_OR_DIR")
    parser.add_argument(
        "--model",
        "--model-dir",
        default=str(paths.MODELS_DIR),
        help="a model folder, or an MLflow model URI such as models:/ser-emotion@champion "
        "(default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines instead of CSV")
    parser.add_argument(
        "--log",
        nargs="?",
        const="",
        metavar="DEST",
        help="also record each answer in the inference log: a folder or a postgresql:// URL "
        f"(alone: ${LOG_ENV}, else monitor.log of the params; docs/monitoring.md)",
    )


def monitor(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    from ser.ops.tracking import stage_run
    from ser.serve.monitor import monitor as judge_window

    verdict = judge_window(
        params.monitor, args.reference, args.out, args.log or os.environ.get(LOG_ENV), args.end
    )
    import mlflow

    with stage_run("monitor", params):
        mlflow.log_metrics(verdict.mlflow_metrics())
        for name in ("monitor.json", "monitor.html"):
            if (args.out / name).is_file():
                mlflow.log_artifact(str(args.out / name), "monitor")
    return 1 if verdict.drift else 0


def monitor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log",
        metavar="DEST",
        help=f"the inference log: a folder or a postgresql:// URL (default: ${LOG_ENV}, else "
        "monitor.log of the params)",
    )
    parser.add_argument(
        "--end",
        type=datetime.fromisoformat,
        help="end of the window, ISO 8601 (default: now; the window is monitor.window_days)",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=paths.MONITOR_REFERENCE,
        help="what the window is compared with (default: %(default)s, written by train)",
    )
    parser.add_argument(
        "--out", type=Path, default=paths.MONITOR_DIR, help="report folder (default: %(default)s)"
    )


def promote(args: argparse.Namespace) -> int:
    from ser.serve.gate import GateFailed
    from ser.serve.registry import promote as promote_version

    try:
        promote_version(load_params(args.params), args.version, args.min_uar)
    except GateFailed as failed:
        log.error("%s", failed)
        return 1
    return 0


def promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version", help="version to judge (default: the one this workspace's train registered)"
    )
    parser.add_argument(
        "--min-uar", type=float, help="threshold (default: quality_gate.min_test_uar)"
    )


def remote(args: argparse.Namespace) -> None:
    from ser.ops import remote as dvc_remote

    dvc_remote.run(args.action, args.remote, args.timeout, args.targets)


def remote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["push", "pull", "status"])
    parser.add_argument("targets", nargs="*", help="DVC files or outputs (default: all)")
    parser.add_argument("-r", "--remote", help="DVC remote name (default: the default remote)")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds before giving up (default: $SER_REMOTE_TIMEOUT or 600)",
    )


COMMANDS: dict[str, Command] = {
    "data": Command("bring a corpus into data/raw", fetch_data, data_arguments),
    "check-params": Command("validate the params file", check_params),
    "preprocess": Command("run the preprocess stage (as dvc.yaml does)", run_stage),
    "tune": Command("run the tune stage (as dvc.yaml does)", run_tune, tune_arguments),
    "train": Command("run the train stage (as dvc.yaml does)", run_stage),
    "evaluate": Command("run the evaluate stage (as dvc.yaml does)", run_stage),
    "predict": Command("label audio files or folders", predict, predict_arguments),
    "promote": Command(
        "quality gate: move alias champion to a registered version whose test UAR passes "
        "(exit 1 when it does not)",
        promote,
        promote_arguments,
    ),
    "remote": Command(
        "dvc push / pull / status -c, bounded in time (see docs/gcs.md)", remote, remote_arguments
    ),
    "monitor": Command(
        "compare a window of the inference log with the training data (exit 1 on drift; "
        "docs/monitoring.md)",
        monitor,
        monitor_arguments,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser", description=__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.arguments(subparsers.add_parser(name, help=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command].run(args) or 0
    except (SerError, FileNotFoundError) as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
