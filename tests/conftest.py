"""Shared fixtures: tiny generated corpora and throw-away copies of the project repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

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
    "features": {"workers": 1, "n_mels": 32, "n_mfcc": 13},
    "train": {"epochs": 3, "batch_size": 16, "early_stopping_patience": 2},
    "split": {"val_fraction": 0.2, "test_fraction": 0.2},
}


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def run(
    command: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command in ``cwd`` with the project's virtual environment first on PATH."""
    result = subprocess.run(
        command, cwd=cwd, env=env or project_env(cwd), capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


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
