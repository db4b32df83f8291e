"""The pipeline's outputs on any x86-64-v3 machine: a tiny generated corpus through the stages.

``test_outputs_match_the_golden_file`` runs preprocess, tune, train and evaluate as ``ser``
does (kernels pinned, src/ser/ops/kernels.py) and checks them against
tests/golden/tiny_pipeline.json: the SHA-256 of every preprocess output, the same bytes on
any x86-64-v3 machine, and the numbers train and evaluate report to ``TOLERANCE``, since a
network's kernels also block their sums by the processor's cache sizes
(docs/reproducibility.md). ``test_two_kernel_settings_give_the_same_bytes`` runs the stages
again on this machine made to look like another, with and without the pins.

After an intended change of outputs, `make golden` (``python tests/test_reproducibility.py``)
rewrites the golden file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import FAST_PARAMS, PROJECT_ROOT, _merge, project_env, run, tree_digest

from ser.corpus.manifest import sha256_of
from ser.ops.kernels import numpy_targets

GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_pipeline.json"
TOLERANCE = 1e-3
"""How far a number of train or evaluate may move on another machine. The linear model's
lbfgs stops at a gradient tolerance of 1e-4, so OpenBLAS's kernel choice moves its (and the
fusion's) probabilities by up to about 1e-4 (1.1e-4 measured); the network's kernels moved
them by 5e-6 (docs/reproducibility.md)."""
TINY = {
    "model": {"kind": "fusion"},  # both members: the default spectrogram CNN and the logreg
    "augment": {"copies": [["noise"], ["pitch"]]},  # pitch shift: numpy's AVX-512 arctan2 once
    "features": {"sets": ["seed", "egemaps"]},  # the seed set's filter banks were BLAS products
    "spectrogram_cnn": {"epochs": 2},
    "train": {"epochs": 2},
    "linear": {"C_grid": [0.1, 1.0]},
    # the tiny model is right and timid: its temperature would sit at the lower bound (0.05),
    # raising probabilities to the 20th power, and the linear model's last bits (OpenBLAS's
    # choice) to 1e-3 in the calibrated confidences; calibration has its own tests
    "calibration": {"enabled": False},
}
"""The pipeline with ``model.kind`` fusion made small, over conftest's fast params.
Its predictions are decisive: any validation or test clip's top two probabilities, at any
fusion weight, are 0.01 apart or more, so no label turns on another machine's last bits."""
PREPROCESS_OUTPUTS = (
    "data/processed/manifest.parquet",
    "data/processed/features.parquet",
    "data/processed/frames.npz",
    "reports/preprocess.json",
)
REPORTED = (
    "reports/train.json",
    "reports/training_curve.csv",
    "reports/metrics.json",
    "reports/evaluation.json",
    "reports/predictions.csv",
)
BLAS_FITTED = "models/logreg/model.joblib"
"""The one output computed by OpenBLAS, whose core type the environment may choose."""
BLAS_DOWNSTREAM = ("models/monitor_reference.parquet", "reports/train.json")
"""Outputs computed from that model's probabilities (validation predictions, the
temperature fitted on them): their bytes may follow its last bits, their numbers agree to
``TOLERANCE``."""

PINNED = """
import sys
from ser.cli import main
for stage in sys.argv[1:]:
    if main([stage]) != 0:
        sys.exit(1)
"""
"""The stages named on the command line, in one process, as ``ser`` runs each: pinned."""
UNPINNED = """
import sys
from pathlib import Path
from ser.config import load_params
from ser.stages import preprocess, train, tune
params = load_params(Path("params.yaml"))
preprocess.run(params)
tune.run(params, Path("params.yaml"))
train.run(params)
"""
"""preprocess, tune and train, called without the ``ser`` command: the kernels left as they load."""
CORPUS = """
import sys
from pathlib import Path
from ser.ops.kernels import pin_numeric_kernels
pin_numeric_kernels()  # numpy's sine makes the clips: its AVX2 loop on every machine
sys.path.insert(0, sys.argv[2])
from conftest import write_ravdess_corpus
write_ravdess_corpus(Path(sys.argv[1]), actors=6, takes=1)
"""


def make_corpus(destination: Path) -> Path:
    """42 RAVDESS-named clips of six speakers, the same bytes on any x86-64-v3 machine."""
    tests = str(Path(__file__).resolve().parent)
    run([sys.executable, "-c", CORPUS, str(destination), tests], PROJECT_ROOT)
    return destination


def tiny_project(destination: Path, corpus: Path, mlflow_db: Path | None = None) -> Path:
    """A workspace with ``corpus`` as data/raw/ravdess and the tiny params (and, given one,
    a copy of an empty MLflow store, which saves creating it)."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    destination.mkdir(parents=True)
    (destination / "params.yaml").write_text(
        yaml.safe_dump(_merge(_merge(params, FAST_PARAMS), TINY), sort_keys=False)
    )
    shutil.copytree(corpus, destination / "data" / "raw" / "ravdess")
    if mlflow_db is not None:
        shutil.copy(mlflow_db, destination / "mlflow.db")
    return destination


def another_machine(environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """A command prefix and an environment that make this machine look like another
    x86-64-v3 one: numpy without its AVX-512 loops, oneDNN without AVX-512, one core, and
    OpenBLAS's Sandybridge kernels unless the environment chose a core type (then it stays)."""
    env = {
        **environ,
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    }
    env.setdefault("OPENBLAS_CORETYPE", "Sandybridge")
    return ["taskset", "--cpu-list", str(min(os.sched_getaffinity(0)))], env


def run_stages(project: Path, code: str, stages: tuple[str, ...] = (), machine=None) -> Path:
    """Run ``code`` (``PINNED`` or ``UNPINNED``) in ``project``, as this machine or as
    ``another_machine``; return ``project``."""
    prefix, env = ([], project_env(PROJECT_ROOT)) if machine is None else machine
    run([*prefix, sys.executable, "-c", code, *stages], project, env=env, timeout=900)
    return project


def digests(project: Path, paths: tuple[str, ...]) -> dict[str, str]:
    return {path: sha256_of(project / path) for path in paths}


def outputs_digest(project: Path) -> dict[str, str]:
    """SHA-256 of what preprocess and train write, by path."""
    written = digests(
        project, (*PREPROCESS_OUTPUTS, "reports/train.json", "reports/training_curve.csv")
    )
    models = {f"models/{path}": digest for path, digest in tree_digest(project / "models").items()}
    return {**written, **models}


def numbers_of(path: Path) -> object:
    """A JSON report as it is; a CSV report as rows with its numbers as floats."""
    if path.suffix == ".json":
        return json.loads(path.read_text())

    def value(text: str) -> object:
        try:
            return float(text)
        except ValueError:
            return text

    with path.open() as handle:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def measure(project: Path, corpus: Path) -> dict[str, object]:
    """What the golden file records of a pinned run of the tiny pipeline in ``project``."""
    clips = tree_digest(corpus)
    return {
        "corpus": {
            "clips": len(clips),
            "sha256": hashlib.sha256(json.dumps(clips, sort_keys=True).encode()).hexdigest(),
        },
        "sha256": digests(project, PREPROCESS_OUTPUTS),
        "numbers": {path: numbers_of(project / path) for path in REPORTED},
    }


def mismatches(actual: object, expected: object, where: str) -> list[str]:
    """Where ``actual`` differs from ``expected``: floats by more than ``TOLERANCE``,
    everything else at all."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if actual.keys() != expected.keys():
            return [f"{where}: keys {sorted(actual)}, expected {sorted(expected)}"]
        return [
            m for key in expected for m in mismatches(actual[key], expected[key], f"{where}.{key}")
        ]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(actual) != len(expected):
            return [f"{where}: {len(actual)} items, expected {len(expected)}"]
        return [
            m
            for i, (a, e) in enumerate(zip(actual, expected, strict=True))
            for m in mismatches(a, e, f"{where}[{i}]")
        ]
    if isinstance(expected, float) and isinstance(actual, int | float):
        return (
            []
            if abs(actual - expected) <= TOLERANCE
            else [f"{where}: {actual}, expected {expected}"]
        )
    return [] if actual == expected else [f"{where}: {actual!r}, expected {expected!r}"]


def assert_numbers_agree(actual: Path, expected: Path) -> None:
    """Two copies of an output (a Parquet table or a report) agree to ``TOLERANCE``."""
    if expected.suffix == ".parquet":
        pd.testing.assert_frame_equal(
            pd.read_parquet(actual), pd.read_parquet(expected), rtol=0, atol=TOLERANCE
        )
        return
    found = mismatches(numbers_of(actual), numbers_of(expected), str(expected))
    assert not found, "numbers beyond the tolerance:\n" + "\n".join(found[:20])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("tiny") / "corpus")


@pytest.fixture(scope="module")
def pinned_run(
    tmp_path_factory: pytest.TempPathFactory, corpus: Path, empty_mlflow_db: Path
) -> Path:
    """Every stage of the tiny pipeline, pinned, on this machine as it is."""
    project = tiny_project(tmp_path_factory.mktemp("pinned") / "project", corpus, empty_mlflow_db)
    return run_stages(project, PINNED, ("preprocess", "tune", "train", "evaluate"))


@pytest.mark.slow
def test_outputs_match_the_golden_file(pinned_run: Path, corpus: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    measured = measure(pinned_run, corpus)
    assert measured["corpus"] == golden["corpus"], (
        "the generated corpus is not the one of the golden file"
    )
    changed = {p: d for p, d in measured["sha256"].items() if d != golden["sha256"].get(p)}
    assert not changed, (
        f"{sorted(changed)} differ from {GOLDEN} (`make golden` after an intended change)"
    )
    found = mismatches(measured["numbers"], golden["numbers"], "")
    assert not found, "numbers beyond the tolerance:\n" + "\n".join(found[:20])


@pytest.mark.slow
def test_two_kernel_settings_give_the_same_bytes(
    pinned_run: Path, corpus: Path, tmp_path: Path, empty_mlflow_db: Path
) -> None:
    """Pinned, this machine and "another" write the same preprocess outputs, models and
    reports; unpinned, they do not (the test's teeth)."""
    machine = another_machine(project_env(PROJECT_ROOT))
    runs = {
        name: (tiny_project(tmp_path / name, corpus, empty_mlflow_db), code, settings)
        for name, code, settings in (
            ("pinned-other", PINNED, machine),
            ("unpinned-this", UNPINNED, None),
            ("unpinned-other", UNPINNED, machine),
        )
    }
    stages = ("preprocess", "tune", "train")
    with ThreadPoolExecutor(len(runs)) as pool:
        done = {
            name: pool.submit(run_stages, project, code, stages, settings)
            for name, (project, code, settings) in runs.items()
        }
        projects = {name: future.result() for name, future in done.items()}

    this, other = outputs_digest(pinned_run), outputs_digest(projects["pinned-other"])
    assert set(this) == set(other)
    differing = {path for path in this if this[path] != other[path]}
    # the environment's OpenBLAS core type is never overridden: the linear model follows it
    assert differing <= {BLAS_FITTED, *BLAS_DOWNSTREAM}, (
        f"pinned runs differ in {sorted(differing)}"
    )
    for path in differing - {BLAS_FITTED}:
        assert_numbers_agree(projects["pinned-other"] / path, pinned_run / path)

    unpinned_this, unpinned_other = (
        outputs_digest(projects[n]) for n in ("unpinned-this", "unpinned-other")
    )
    unpinned_differing = {path for path in this if unpinned_this[path] != unpinned_other[path]}
    assert unpinned_differing - {BLAS_FITTED, *BLAS_DOWNSTREAM}, "unpinned, the settings agreed"
    if "X86_V4" in numpy_targets():  # this machine has AVX-512: its unpinned frames differ
        assert "data/processed/frames.npz" in unpinned_differing


def refresh_golden() -> None:
    """Run the pinned tiny pipeline and write what it measured to the golden file."""
    with tempfile.TemporaryDirectory() as scratch:
        corpus = make_corpus(Path(scratch) / "corpus")
        project = run_stages(
            tiny_project(Path(scratch) / "project", corpus),
            PINNED,
            ("preprocess", "tune", "train", "evaluate"),
        )
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(measure(project, corpus), indent=1, sort_keys=True) + "\n")
    logging.getLogger("golden").info("wrote %s", GOLDEN.relative_to(PROJECT_ROOT))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    refresh_golden()
