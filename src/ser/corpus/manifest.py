"""The manifest: one row per usable clip, built from the raw folder's file names."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import soundfile
from tqdm import tqdm

from ser.config import CorpusName
from ser.corpus.conventions import UnsupportedClip, identify
from ser.signal.audio import check_header, require_regular_file

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff"})
MANIFEST_COLUMNS = [
    "path",
    "corpus",
    "speaker",
    "sex",
    "label",
    "intensity",
    "duration",
    "sample_rate",
    "channels",
    "sha256",
]


@dataclass(frozen=True)
class Problem:
    """A file that was skipped, and why."""

    path: str
    reason: str


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def describe_clip(path: Path, corpora: list[CorpusName]) -> dict[str, object]:
    """One manifest row; raise UnsupportedClip or ValueError naming what is wrong."""
    info = identify(path, corpora)
    require_regular_file(path)
    if path.stat().st_size == 0:
        raise ValueError("empty file")
    try:
        header = soundfile.info(path)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise ValueError(f"not readable audio ({error})") from None
    check_header(header.frames, header.samplerate)
    return {
        "path": path.as_posix(),
        **asdict(info),
        "duration": header.frames / header.samplerate,
        "sample_rate": header.samplerate,
        "channels": header.channels,
        "sha256": sha256_of(path),
    }


def scan(raw_dir: Path, corpora: list[CorpusName]) -> tuple[pd.DataFrame, list[Problem]]:
    """Describe every audio file under ``raw_dir``; unusable ones become Problems."""
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: raw data folder not found (run `ser data` first)")
    files = sorted(p for p in raw_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    rows, problems = [], []
    for path in tqdm(files, desc="scanning", unit="file", disable=None):
        try:
            rows.append(describe_clip(path, corpora))
        except (UnsupportedClip, ValueError, OSError) as error:
            log.warning("skipping %s: %s", path, error)
            problems.append(Problem(path.as_posix(), str(error)))
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), problems
