"""Speed figures of the pipeline on the shared RAVDESS (``make benchmark``).

1. feature extraction throughput, cold cache, 1 and 2 workers (originals), and the
   full preprocess with the default augmentation recipes;
2. a whole ``dvc repro`` (default params, no tuning) in a temporary git + DVC copy;
3. the re-run after adding 12 clips to that copy, and how many clips were re-extracted;
4. single-clip ``ser predict`` latency once the model is loaded.

Everything runs in a temporary directory; the figures go to ``--out`` (.md and .json,
default ``benchmarks/results/pipeline_speed``), which docs/benchmarks.md quotes.
``--quick`` takes 200 clips and skips (2) and (3).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ser.config import Params, load_params
from ser.corpus.manifest import scan
from ser.corpus.split import assign_splits
from ser.ops.atomic import write_json, write_with
from ser.signal.audio import condition, decode
from ser.table.extract import extract_features

log = logging.getLogger("benchmark")

ROOT = Path(__file__).resolve().parents[1]
SHARED_RAVDESS = ROOT.parent / "shared" / "datasets" / "ravdess-speech-16k"
PROJECT_FILES = ("src", "dvc.yaml", "params.yaml", "pyproject.toml", ".gitignore", ".dvcignore")
# held back from the first repro, added before the second; no speaker appears, so the split stays
HELD_BACK = {"Actor_01": 6, "Actor_02": 6}
QUICK_CLIPS = 200
LATENCY_CLIPS = 50
STAGE_LINE = re.compile(r"Running stage '([\w-]+)'")


@dataclass
class Row:
    name: str
    value: float
    unit: str
    target: str = ""


def with_changes(params: Params, section: str, **changes: object) -> Params:
    """``params`` with some keys of one section replaced."""
    return params.model_copy(update={section: getattr(params, section).model_copy(update=changes)})


def every_nth(frame: pd.DataFrame, count: int) -> pd.DataFrame:
    """About ``count`` rows spread evenly over the frame (so over every speaker)."""
    return frame.iloc[:: max(1, len(frame) // count)].head(count).reset_index(drop=True)


def timed_extraction(manifest: pd.DataFrame, params: Params, scratch: Path) -> tuple[float, int]:
    """Wall seconds of extract_features into a fresh cache, and the feature rows it made."""
    cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=scratch))
    params = with_changes(params, "features", cache_dir=cache_dir)
    started = time.perf_counter()
    extracted = extract_features(manifest, params)
    seconds = time.perf_counter() - started
    if extracted.errors:
        log.warning(
            "%d clips failed: %s", len(extracted.errors), next(iter(extracted.errors.items()))
        )
    return seconds, len(extracted.table)


def measure_extraction(manifest: pd.DataFrame, params: Params, scratch: Path) -> list[Row]:
    """Cold-cache throughput: seed-set originals with 1 and 2 workers, the sets of params.yaml,
    then the full preprocess."""
    # librosa's lazy imports (effects, feature -> scipy.signal) cost seconds once per
    # process; paid here, the forked workers inherit them and the rates are steady-state
    warm_up, _ = timed_extraction(manifest[manifest["split"] == "train"].head(2), params, scratch)
    rows = [Row("first 2 clips in a process (lazy imports)", warm_up, "s")]
    originals = with_changes(params, "augment", copies=[])
    runs = [(["seed"], 1, ""), (["seed"], 2, ">= 200")]  # the target is the seed set's
    if params.features.sets != ["seed"]:
        runs.append((params.features.sets, params.features.workers, ""))
    for sets, workers, target in runs:
        changed = with_changes(originals, "features", workers=workers, sets=sets)
        seconds, _ = timed_extraction(manifest, changed, scratch)
        log.info("%s originals, %d worker(s): %.1f s", "+".join(sets), workers, seconds)
        name = f"extract {'+'.join(sets)} originals, {workers} worker(s)"
        rows.append(Row(name, len(manifest) / seconds, "clips/s", target))
    seconds, vectors = timed_extraction(manifest, params, scratch)
    log.info("with augmentation: %d rows of %d clips in %.1f s", vectors, len(manifest), seconds)
    name = f"extract + augment {params.augment.copies}, {params.features.workers} worker(s)"
    rows.append(Row(name, vectors / seconds, "rows/s"))
    rows.append(Row("  same run", len(manifest) / seconds, "clips/s"))
    return rows


def project_env(repo: Path) -> dict[str, str]:
    """Commands in the copy use its src/ and its own MLflow store (mlflow.db in the copy)."""
    env = dict(os.environ, PYTHONPATH=str(repo / "src"), TF_CPP_MIN_LOG_LEVEL="3")
    env.update(PYTHONUNBUFFERED="1", DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for name in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME"):
        env.pop(name, None)
    return env


def sh(command: list[str], repo: Path) -> None:
    result = subprocess.run(
        command, cwd=repo, env=project_env(repo), capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")


def make_project_copy(repo: Path, corpus: Path, held_back: list[Path]) -> None:
    """git + DVC repository of this project's code and params, ``corpus`` minus ``held_back`` as data/raw."""
    repo.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, repo / name)
    skipped = {p.name for p in held_back}
    shutil.copytree(corpus, repo / "data/raw/ravdess", ignore=lambda _, names: skipped & set(names))
    for command in (
        "git init -q -b main",
        "git config user.name benchmark",
        "git config user.email benchmark@localhost",
        "dvc init -q",
        "dvc config core.analytics false",
        "dvc add -q data/raw",
        "git add -A",
        "git commit -qm copy",
    ):
        sh(command.split(), repo)


def timed_repro(repo: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``dvc repro`` and of each stage it ran (from its "Running stage" lines)."""
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    output: list[str] = []
    command = ["dvc", "repro"]
    pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with subprocess.Popen(command, cwd=repo, env=project_env(repo), **pipe) as process:
        for line in process.stdout:
            output.append(line)
            if match := STAGE_LINE.search(line):
                log.info("dvc repro: stage %s", match.group(1))
                marks.append((match.group(1), time.perf_counter()))
    ended = time.perf_counter()
    if process.returncode != 0:
        raise RuntimeError(f"dvc repro failed ({process.returncode}):\n{''.join(output[-40:])}")
    ends = [t for _, t in marks[1:]] + [ended]
    return ended - started, {stage: end - t for (stage, t), end in zip(marks, ends, strict=True)}


def extraction_report(repo: Path) -> dict[str, int]:
    """Clips of the last preprocess run and how many it extracted (from its MLflow run)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ser")
    (latest,) = client.search_runs(
        [experiment.experiment_id],
        "tags.`ser.stage` = 'preprocess'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    metrics = latest.data.metrics
    return {"clips": int(metrics["clips"]), "computed_clips": int(metrics["extracted_clips"])}


def measure_repro(corpus: Path, repo: Path) -> list[Row]:
    """(2) first ``dvc repro`` without the held-back clips, (3) re-run after adding them."""
    held_back = [
        p for actor, n in HELD_BACK.items() for p in sorted((corpus / actor).glob("*.flac"))[-n:]
    ]
    make_project_copy(repo, corpus, held_back)
    log.info("dvc repro in %s, without %d clips", repo, len(held_back))
    first, stages = timed_repro(repo)
    before = extraction_report(repo)
    log.info("first repro: %.0f s, stages %s, extraction %s", first, stages, before)
    rows = [Row(f"dvc repro from scratch, {before['clips']} clips", first, "s", "<= 600")]
    rows += [Row(f"  stage {stage}", seconds, "s") for stage, seconds in stages.items()]

    for path in held_back:
        shutil.copy2(path, repo / "data/raw/ravdess" / path.parent.name / path.name)
    sh(["dvc", "add", "-q", "data/raw"], repo)
    second, stages = timed_repro(repo)
    after = extraction_report(repo)
    log.info("re-run: %.0f s, stages %s, extraction %s", second, stages, after)
    rows.append(
        Row(f"re-run after adding {len(held_back)} clips ({after['clips']} total)", second, "s")
    )
    rows += [Row(f"  stage {stage}", seconds, "s") for stage, seconds in stages.items()]
    rows.append(
        Row("  clips re-extracted", after["computed_clips"], "clips", f"= {len(held_back)}")
    )
    return rows


def measure_latency(model_dir: Path, clips: list[Path], scratch: Path) -> list[Row]:
    """One clip at a time, as ``ser predict --log`` does: decoding, the speech gate,
    conditioning and features, then the model; the model alone on the same clips' inputs;
    and what recording each answer in the inference log costs the request path."""
    from ser.models.bundle import Classifier  # TensorFlow only now: extraction above forks
    from ser.serve.inference_log import InferenceLog, ModelIdentity, ParquetSink
    from ser.serve.predict import feature_rows, featurise, predict_clips

    started = time.perf_counter()
    classifier = Classifier.load(model_dir)
    load_seconds = time.perf_counter() - started

    def inputs(path: Path):
        signal = condition(*decode(path), classifier.audio)
        vector, frames = featurise(signal, classifier)
        return feature_rows([vector], [frames], classifier)

    list(predict_clips([(clips[0], clips[0])], classifier))  # builds the network's function
    log = InferenceLog(ParquetSink(scratch / "log"), ModelIdentity("benchmark", "-"), "predict")
    totals, networks, records = [], [], []
    for path in clips:
        started = time.perf_counter()
        answers = list(predict_clips([(path, path)], classifier))
        totals.append(1000 * (time.perf_counter() - started))
        started = time.perf_counter()
        log.record(answers)
        records.append(1000 * (time.perf_counter() - started))
        rows = inputs(path)
        started = time.perf_counter()
        classifier.predict_proba(rows)
        networks.append(1000 * (time.perf_counter() - started))
    log.close()
    return [
        Row(f"model load ({model_dir})", load_seconds, "s"),
        Row(f"predict one clip, median of {len(clips)}", statistics.median(totals), "ms", "<= 50"),
        Row("predict one clip, p95", float(np.percentile(totals, 95)), "ms", "<= 50"),
        Row("  of which model, median", statistics.median(networks), "ms"),
        Row(
            f"  inference log record, p95 ({log.written} written)",
            float(np.percentile(records, 95)),
            "ms",
            "<= 1",
        ),
    ]


def machine() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model.group(1) if model else "unknown",
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def markdown(rows: list[Row], info: dict[str, object]) -> str:
    """The figures as a table, and the machine they were measured on."""
    lines = ["| measure | value | unit | target |", "|---|---|---|---|"]
    lines += [f"| {r.name.strip()} | {r.value:.4g} | {r.unit} | {r.target} |" for r in rows]
    lines += ["", ", ".join(f"{key}: {value}" for key, value in info.items())]
    return "\n".join(lines) + "\n"


def write_results(rows: list[Row], info: dict[str, object], out: Path) -> str:
    """``out``.md and ``out``.json; the table."""
    text = markdown(rows, info)
    write_json(out.with_suffix(".json"), {"machine": info, "results": [asdict(r) for r in rows]})
    write_with(out.with_suffix(".md"), lambda path: path.write_text(text))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CLIPS} clips, no dvc repro")
    parser.add_argument("--corpus", type=Path, default=SHARED_RAVDESS, help="RAVDESS folder")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "pipeline_speed",
        help="writes <out>.md and <out>.json (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for noisy in ("mlflow", "absl", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    info = machine() | {"quick": args.quick, "corpus": str(args.corpus)}

    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="ser-bench-") as scratch:
        scan_started = time.perf_counter()
        manifest, _ = scan(args.corpus, params.data.corpora)
        scan_seconds = time.perf_counter() - scan_started
        rows = [Row(f"scan {len(manifest)} clips (manifest + sha256)", scan_seconds, "s")]
        manifest["split"] = assign_splits(manifest, params.split)
        if args.quick:
            manifest = every_nth(manifest, QUICK_CLIPS)
        rows += measure_extraction(manifest, params, Path(scratch))

        model_dir = ROOT / "models"
        if not args.quick:
            rows += measure_repro(args.corpus, Path(scratch) / "project")
            model_dir = Path(scratch) / "project" / "models"
        if (model_dir / "classifier.json").is_file():
            clips = [Path(p) for p in every_nth(manifest, LATENCY_CLIPS)["path"]]
            rows += measure_latency(model_dir, clips, Path(scratch))
        else:
            log.warning("no trained model in %s: latency skipped", model_dir)

    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    print("\n" + write_results(rows, info, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
