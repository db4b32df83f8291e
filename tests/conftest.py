"""Shared fixtures: tiny generated corpora and throw-away copies of the project repository."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import yaml

import ser.models  # noqa: F401  (loads openSMILE before any test module loads TensorFlow)
from ser.config import Params, parse_params

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_RAVDESS = PROJECT_ROOT.parent / "shared" / "datasets" / "ravdess-speech-16k"

RAVDESS_EMOTION_CODES = (
    "01",
    "03",
    "04",
    "05",
    "06",
    "07",
    "08",
)  # one per label (calm = 02 folds into neutral)
SAMPLE_RATE = 16_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
"""The first bytes of every PNG file."""


def synth_clip(
    emotion_index: int, speaker_index: int, take: int, seconds: float = 0.8
) -> np.ndarray:
    """A voiced-sounding tone whose pitch and brightness depend on the emotion, with silence around it."""
    rng = np.random.default_rng(1000 * emotion_index + 10 * speaker_index + take)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 110 + 35 * emotion_index + 6 * speaker_index + rng.normal(0, 3)
    voice = sum(
        np.sin(2 * np.pi * pitch * k * t) / k ** (1 + 0.15 * emotion_index) for k in range(1, 6)
    )
    voice *= 0.5 + 0.5 * np.sin(2 * np.pi * (2 + emotion_index) * t) ** 2
    voice += rng.normal(0, 0.02, t.shape)
    silence = np.zeros(int(0.25 * SAMPLE_RATE))
    return (0.3 * np.concatenate([silence, voice / np.abs(voice).max(), silence])).astype(
        np.float32
    )


def write_ravdess_corpus(root: Path, actors: int = 6, takes: int = 2) -> list[Path]:
    """RAVDESS-named FLAC clips: ``actors`` speakers (odd male, even female) x 7 emotions x ``takes``."""
    paths = []
    for actor in range(1, actors + 1):
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for emotion_index, code in enumerate(RAVDESS_EMOTION_CODES):
            for take in range(takes):
                intensity = "01" if code == "01" else f"0{1 + take % 2}"
                name = f"03-01-{code}-{intensity}-01-0{take % 2 + 1}-{actor:02d}.flac"
                path = folder / name
                soundfile.write(path, synth_clip(emotion_index, actor, take), SAMPLE_RATE)
                paths.append(path)
    return paths


@pytest.fixture
def ravdess_corpus(tmp_path: Path) -> Path:
    """A folder of 84 tiny generated RAVDESS-style clips (6 speakers)."""
    root = tmp_path / "corpus"
    write_ravdess_corpus(root)
    return root


FAST_PARAMS = {
    "augment": {"copies": [["noise"]]},
    "features": {"sets": ["seed"], "workers": 1, "n_mels": 32, "n_mfcc": 13},
    "frames": {"n_mels": 16, "max_frames": 64},
    "spectrogram_cnn": {"channels": [8, 16], "epochs": 3, "batch_size": 16},
    "seed_cnn": {"batch_size": 16},
    "train": {"epochs": 3, "early_stopping_patience": 2},
    "split": {"val_fraction": 0.2, "test_fraction": 0.2},
    # the generated clips are tones, which the speech gate rightly refuses: gate off
    "speech": {"min_speech_seconds": 0.0},
}


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


COMMAND_TIMEOUT = 600.0
"""Seconds one command of a test may take: generous, the slowest (`dvc repro` of a tiny project) takes a minute or two."""


def run(
    command: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT,
    output: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run a command in ``cwd`` with the project's virtual environment first on PATH.

    Its stdout and stderr are captured, or written to the file ``output`` instead: a command
    that leaves a daemon behind (`dvc queue start`) must not be given pipes, which the daemon
    would hold open. The command runs in its own process group, killed after ``timeout``
    seconds (or on any interruption); a timeout fails the test naming the command.
    """
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(output.open("w")) if output else subprocess.PIPE
        process = stack.enter_context(
            subprocess.Popen(
                command,
                cwd=cwd,
                env=env or project_env(cwd),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT if output else subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException as error:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            if not isinstance(error, subprocess.TimeoutExpired):
                raise
            so_far = (
                output.read_text()
                if output
                else b"\n".join(filter(None, (error.stdout, error.stderr))).decode(errors="replace")
            )
            raise AssertionError(
                f"`{shlex.join(command)}` in {cwd} timed out after {timeout:g} s and was killed; "
                f"the end of its output:\n{so_far[-3000:]}"
            ) from None
    if output:
        stdout, stderr = output.read_text(), ""
    if check and process.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({process.returncode}):\n{stdout}\n{stderr}"
        )
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def project_env(repo: Path) -> dict[str, str]:
    """Environment for commands in a project copy: its own src/ and MLflow store, quiet TF."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(repo / "src")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_EXP_NAME", None)
    return env


def make_project_repo(destination: Path, corpus: Path, params_override: dict | None = None) -> Path:
    """A git + DVC repository made from this project (code, pipeline, params) with ``corpus`` as data/raw.

    Raw data is added with ``dvc add`` and everything is committed, as a user's clone would be.
    """
    destination.mkdir(parents=True)
    for name in (
        "src",
        "dvc.yaml",
        "params.yaml",
        "pyproject.toml",
        ".gitignore",
        ".dvcignore",
        "dags",
    ):
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, destination / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        elif source.exists():
            shutil.copy2(source, destination / name)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params = _merge(_merge(params, FAST_PARAMS), params_override or {})
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(corpus, destination / "data" / "raw" / "ravdess")
    run(["git", "init", "-q", "-b", "main"], destination)
    run(["git", "config", "user.email", "test@example.com"], destination)
    run(["git", "config", "user.name", "test"], destination)
    run(["dvc", "init", "-q"], destination)
    run(["dvc", "config", "core.analytics", "false"], destination)
    run(["dvc", "add", "-q", "data/raw"], destination)
    run(["git", "add", "-A"], destination)
    run(["git", "commit", "-qm", "project with a tiny corpus"], destination)
    return destination


@pytest.fixture
def project_repo(tmp_path: Path, ravdess_corpus: Path) -> Callable[..., Path]:
    """Factory: ``project_repo(params_override=None)`` makes a fresh project repository under tmp_path."""
    counter = iter(range(1000))

    def factory(params_override: dict | None = None) -> Path:
        return make_project_repo(tmp_path / f"repo{next(counter)}", ravdess_corpus, params_override)

    return factory


# Helpers for the unit tests: generated signals, fast params, a synthetic feature
# table, a tiny trained model and throw-away MLflow stores.

TINY_SEED_CNN = {"filters": [8, 8, 8], "kernel_size": 3, "dense_units": [8, 8]}
"""A seed-CNN shape small enough to train in a second (the ``seed_cnn`` section)."""
TRAINED_KINDS = ("spectrogram_cnn", "seed_cnn", "logreg", "linear_svm", "fusion")


def tone(
    seconds: float = 1.0,
    frequency: float = 220.0,
    amplitude: float = 0.3,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """A pure sine tone."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def noise(
    seconds: float = 1.0, amplitude: float = 0.1, seed: int = 0, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Seeded white noise."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, amplitude, int(seconds * sample_rate)).astype(np.float32)


def audio_bytes(
    samples: np.ndarray, sample_rate: int = SAMPLE_RATE, audio_format: str = "WAV"
) -> bytes:
    """The bytes of an audio file of ``samples``, as a client would send them."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format=audio_format)
    return buffer.getvalue()


def write_audio(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write ``samples`` (frames, or frames x channels) to ``path``, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, sample_rate)
    return path


def make_params(override: dict | None = None) -> Params:
    """FAST_PARAMS over the defaults, then ``override``, validated as params.yaml would be."""
    return parse_params(_merge(FAST_PARAMS, override or {}))


def feature_table(
    params: Params,
    splits: dict[str, int] | None = None,
    takes: int = 2,
    seed: int = 0,
    spread: float = 0.3,
) -> pd.DataFrame:
    """A learnable feature table shaped like preprocess's output, with its frames.

    ``splits`` maps split → number of speakers (alternating male/female); each
    speaker has ``takes`` clips of every label, and training clips one ``noise`` copy.
    Vectors are a per-label centre plus Gaussian noise of standard deviation ``spread``;
    frames (``logmel`` column, 12 to 40 of them) a per-label band profile plus noise.
    """
    from ser import EMOTIONS
    from ser.signal.features import feature_names
    from ser.table.store import FRAMES_COLUMN

    names = feature_names(params.features)
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(EMOTIONS), len(names)))
    profiles = rng.normal(0, 3, (len(EMOTIONS), params.frames.n_mels))
    rows, values, frames = [], [], []
    speaker = 0
    for split, count in (splits or {"train": 4, "val": 2, "test": 2}).items():
        for _ in range(count):
            speaker += 1
            for label_index, label in enumerate(EMOTIONS):
                for take in range(takes):
                    augmentations = ("none", "noise") if split == "train" else ("none",)
                    for augmentation in augmentations:
                        rows.append(
                            {
                                "path": f"raw/s{speaker:02d}/{label}_{take}.wav",
                                "corpus": "ravdess",
                                "speaker": f"ravdess:{speaker:02d}",
                                "sex": "male" if speaker % 2 else "female",
                                "label": label,
                                "intensity": ("normal", "strong")[take % 2],
                                "split": split,
                                "augmentation": augmentation,
                            }
                        )
                        values.append(centres[label_index] + rng.normal(0, spread, len(names)))
                        steps = int(rng.integers(12, 41))
                        noisy = profiles[label_index] + rng.normal(
                            0, 3 * spread, (steps, len(profiles[0]))
                        )
                        frames.append(noisy.astype(np.float32))
    table = pd.concat(
        [pd.DataFrame(rows), pd.DataFrame(np.asarray(values, np.float32), columns=names)], axis=1
    )
    return table.assign(**{FRAMES_COLUMN: frames})


def write_feature_files(table: pd.DataFrame) -> None:
    """Write ``table`` where the pipeline keeps it: vectors as parquet, frames apart."""
    from ser import paths
    from ser.ops.atomic import write_parquet
    from ser.table.store import FRAMES_COLUMN, write_frames

    write_parquet(paths.FEATURES, table.drop(columns=FRAMES_COLUMN))
    write_frames(paths.FRAMES_FILE, table[FRAMES_COLUMN].tolist())


def kind_params(kind: str, override: dict | None = None) -> Params:
    """Fast params for ``model.kind`` = ``kind``, with a tiny seed CNN, then ``override``."""
    return make_params(_merge({"model": {"kind": kind}, "seed_cnn": TINY_SEED_CNN}, override or {}))


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``models/`` of a tiny model of every kind, fitted for two epochs on a synthetic table."""
    from ser.models import kind_named
    from ser.models.bundle import Classifier
    from ser.table.store import select

    table = feature_table(make_params())
    train_rows, val_rows = select(table, "train", with_augmented=True), select(table, "val")
    directories = {}
    for kind in TRAINED_KINDS:
        params = kind_params(kind, {"train": {"epochs": 2}, "spectrogram_cnn": {"epochs": 2}})
        fitted = kind_named(kind).fit(train_rows, val_rows, params, ())
        directory = tmp_path_factory.mktemp(f"models-{kind}")
        Classifier(
            kind, fitted.model, params.audio, params.features, params.frames, params.speech
        ).save(directory)
        directories[kind] = directory
    return directories


@pytest.fixture(scope="session")
def trained_model_dir(trained_models: dict[str, Path]) -> Path:
    """``models/`` of a tiny spectrogram CNN (every kind that reads frames has one)."""
    return trained_models["spectrogram_cnn"]


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow SQLite store (creating one costs seconds; copying it does not)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_mlflow_db: Path
) -> Iterator[Path]:
    """tmp_path as the working directory with its own embedded MLflow store (never the project's)."""
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    yield tmp_path
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()


# What a stage reads of params.yaml, against what dvc.yaml declares for it.


@contextlib.contextmanager
def sections_read() -> Iterator[set[str]]:
    """The params sections read (an attribute of any ``Params``) while inside.

    Iterating or dumping a whole ``Params`` (as MLflow's logging does) reads nothing.
    """
    read: set[str] = set()
    original = Params.__getattribute__

    def recording(self: Params, name: str) -> object:
        if name in Params.model_fields:
            read.add(name)
        return original(self, name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Params, "__getattribute__", recording)
        yield read


def declared_sections(stage: str) -> set[str]:
    """The params sections ``dvc.yaml`` declares for ``stage``, plus ``mlflow``: MLflow
    settings change no output, so no stage declares them."""
    declared = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"][stage]
    return {*declared.get("params", []), "mlflow"}


# Helpers for tests with servers on 127.0.0.1 and for checking that files were left alone.


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative path (empty folders as ``dir``)."""
    from ser.corpus.manifest import sha256_of

    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): "dir" if path.is_dir() else sha256_of(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() or (path.is_dir() and not any(path.iterdir()))
    }


class LoopbackServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server on a free port of 127.0.0.1; ``with server:`` serves it in a thread."""

    daemon_threads = True

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]):
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> LoopbackServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()
