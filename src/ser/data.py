"""``ser data``: bring a corpus into ``data/raw`` from a local folder or a zip archive URL."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from ser.artifacts import atomic_path
from ser.manifest import AUDIO_SUFFIXES, sha256_of

log = logging.getLogger(__name__)

SHARED_RAVDESS = Path("../shared/datasets/ravdess-speech-16k")
RAVDESS_URL = "https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip"
SOURCE_ENV = "SER_CORPUS_SOURCE"
SIDE_FILES = frozenset({"VideoDemographics.csv"})  # metadata some corpora keep beside the audio
DOWNLOAD_TIMEOUT_S = 30


class DataError(RuntimeError):
    """The corpus could not be brought in; ``data/raw`` is unchanged."""


def default_source() -> str:
    """``$SER_CORPUS_SOURCE``, else the shared RAVDESS copy when present, else the RAVDESS URL."""
    if os.environ.get(SOURCE_ENV):
        return os.environ[SOURCE_ENV]
    return str(SHARED_RAVDESS) if SHARED_RAVDESS.is_dir() else RAVDESS_URL


def _corpus_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and (p.suffix.lower() in AUDIO_SUFFIXES or p.name in SIDE_FILES)
    )  # fmt: skip


def install_folder(source: Path, destination: Path) -> tuple[int, int]:
    """Copy a corpus folder's audio into ``destination``; return (copied, already present).

    Nothing is copied when any file already there differs from its source.
    """
    if not source.is_dir():
        raise DataError(f"{source}: corpus folder not found")
    files = _corpus_files(source)
    if not files:
        raise DataError(f"{source}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    todo, present, conflicts = [], 0, []
    for file in files:
        target = destination / file.relative_to(source)
        if not target.exists():
            todo.append((file, target))
        elif sha256_of(target) == sha256_of(file):
            present += 1
        else:
            conflicts.append(str(target))
    if conflicts:
        listed = "\n  ".join(conflicts[:20])
        raise DataError(
            f"{len(conflicts)} file(s) in {destination} differ from {source}; nothing was "
            f"copied. Move them away or choose another --name:\n  {listed}"
        )
    for file, target in tqdm(todo, desc="copying", unit="file", disable=None):
        with atomic_path(target) as temporary:
            shutil.copyfile(file, temporary)
    return len(todo), present


def download(url: str, target: Path, expected_sha256: str | None) -> None:
    """Download ``url`` to ``target`` with progress; verify its SHA-256 when given."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            digest = hashlib.sha256()
            with (
                target.open("wb") as out,
                tqdm(
                    total=size, unit="B", unit_scale=True, desc="downloading", disable=None
                ) as progress,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise DataError(f"{url}: download failed ({error})") from None
    if size is not None and target.stat().st_size != size:
        raise DataError(f"{url}: download truncated ({target.stat().st_size} of {size} bytes)")
    actual = digest.hexdigest()
    if expected_sha256 and actual != expected_sha256.lower():
        raise DataError(f"{url}: checksum mismatch (expected {expected_sha256}, got {actual})")
    log.info("downloaded %s (sha256 %s)", url, actual)


def install_archive(url: str, destination: Path, expected_sha256: str | None) -> tuple[int, int]:
    """Download a zip to a temporary folder, unpack it there, then install its audio."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".download-") as scratch:
        archive = Path(scratch) / "corpus.zip"
        download(url, archive, expected_sha256)
        unpacked = Path(scratch) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(unpacked)
        except zipfile.BadZipFile as error:
            raise DataError(f"{url}: not a valid zip archive ({error})") from None
        return install_folder(unpacked, destination)


def fetch_corpus(source: str, raw_dir: Path, name: str, sha256: str | None = None) -> Path:
    """Bring the corpus at ``source`` (folder or URL) into ``raw_dir/name``."""
    destination = raw_dir / name
    if source.startswith(("http://", "https://")):
        copied, present = install_archive(source, destination, sha256)
    else:
        copied, present = install_folder(Path(source), destination)
    log.info("%s: %d file(s) copied, %d already present", destination, copied, present)
    return destination
