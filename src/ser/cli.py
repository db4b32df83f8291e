"""The ``ser`` command: one subcommand per pipeline stage, plus ``data``, ``predict``,
``promote`` and ``remote``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ser import paths
from ser.config import DEFAULT_PARAMS, ConfigError, load_params

log = logging.getLogger("ser")

STAGES = ("preprocess", "tune", "train", "evaluate")


def _stage(name: str, params_path: Path) -> None:
    params = load_params(params_path)  # validated before any work starts
    if name == "preprocess":
        from ser import preprocess as stage
    elif name == "train":
        from ser import train as stage
    else:
        from ser import evaluate as stage
    stage.run(params)


def _tune(args: argparse.Namespace) -> None:
    params = load_params(args.params)  # validated before the heavy imports
    from ser import tune

    if args.worker is None:
        tune.run(params, args.params)
    else:
        tune.run_worker(params, args.worker, args.parent_run_id)


def _data(args: argparse.Namespace) -> None:
    from ser.data import default_source, fetch_corpus

    params = load_params(args.params)
    source = args.source or default_source()
    fetch_corpus(source, params.data.raw_dir, args.name, args.sha256)


def _predict(args: argparse.Namespace) -> int:
    from ser.predict import write_predictions

    failures = write_predictions(args.inputs, args.model, args.json)
    return 1 if failures else 0


def _promote(args: argparse.Namespace) -> int:
    from ser.registry import GateFailed, promote

    try:
        promote(load_params(args.params), args.version, args.min_uar)
    except GateFailed as failed:
        log.error("%s", failed)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser", description=__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="bring a corpus into data/raw")
    data.add_argument(
        "--source",
        help="corpus folder or zip URL (default: $SER_CORPUS_SOURCE, else the shared "
        "RAVDESS copy when present, else the official RAVDESS speech archive)",
    )
    data.add_argument("--name", default="ravdess", help="folder under data/raw (default: ravdess)")
    data.add_argument("--sha256", help="expected SHA-256 of a downloaded archive")

    for stage in STAGES:
        stage_parser = commands.add_parser(stage, help=f"run the {stage} stage (as dvc.yaml does)")
        if stage == "tune":
            stage_parser.add_argument(
                "--worker",
                type=int,
                metavar="N",
                help="only run trials as extra worker N of the shared study (writes no outputs)",
            )
            stage_parser.add_argument("--parent-run-id", help="MLflow run to nest trials under")

    commands.add_parser(
        "check-params", help="validate the params file (the check_params stage of dvc.yaml)"
    )

    predict = commands.add_parser("predict", help="label audio files or folders")
    predict.add_argument("inputs", nargs="+", type=Path, metavar="FILE_OR_DIR")
    predict.add_argument(
        "--model",
        "--model-dir",
        default=str(paths.MODELS_DIR),
        help="a model folder, or an MLflow model URI such as models:/ser-emotion@champion "
        "(default: %(default)s)",
    )

    promote = commands.add_parser(
        "promote",
        help="quality gate: move alias champion to a registered version whose test UAR passes "
        "(exit 1 when it does not)",
    )
    promote.add_argument(
        "--version", help="version to judge (default: the one this workspace's train registered)"
    )
    promote.add_argument(
        "--min-uar", type=float, help="threshold (default: evaluate.min_test_uar in the params)"
    )
    predict.add_argument("--json", action="store_true", help="JSON lines instead of CSV")

    remote = commands.add_parser(
        "remote", help="dvc push / pull / status -c, bounded in time (see docs/gcs.md)"
    )
    remote.add_argument("action", choices=["push", "pull", "status"])
    remote.add_argument("targets", nargs="*", help="DVC files or outputs (default: all)")
    remote.add_argument("-r", "--remote", help="DVC remote name (default: the default remote)")
    remote.add_argument(
        "--timeout",
        type=float,
        help="seconds before giving up (default: $SER_REMOTE_TIMEOUT or 600)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("mlflow", "alembic", "absl", "h5py", "numba", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from ser import remote
    from ser.data import DataError
    from ser.split import SplitError

    expected = [ConfigError, DataError, SplitError, FileNotFoundError, remote.RemoteError]
    if args.command in ("train", "evaluate", "predict"):  # they load TensorFlow anyway
        from ser.models.base import ModelError

        expected.append(ModelError)
    if args.command == "promote":
        from ser.registry import RegistryError

        expected.append(RegistryError)

    try:
        if args.command == "data":
            _data(args)
        elif args.command == "predict":
            return _predict(args)
        elif args.command == "promote":
            return _promote(args)
        elif args.command == "check-params":
            load_params(args.params)
            log.info("%s: valid", args.params)
        elif args.command == "remote":
            remote.run(args.action, args.remote, args.timeout, args.targets)
        elif args.command == "tune":
            _tune(args)
        else:
            _stage(args.command, args.params)
    except tuple(expected) as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
