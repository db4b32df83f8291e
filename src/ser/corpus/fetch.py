"""``ser data``: bring a corpus into ``data/raw`` from a local folder or a zip archive URL."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from ser.corpus.manifest import AUDIO_SUFFIXES, sha256_of
from ser.errors import SerError
from ser.ops.atomic import atomic_path

log = logging.getLogger(__name__)

SHARED_RAVDESS = Path("../shared/datasets/ravdess-speech-16k")
RAVDESS_URL = "https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip"
SOURCE_ENV = "SER_CORPUS_SOURCE"
SIDE_FILES = frozenset({"VideoDemographics.csv"})  # metadata some corpora keep beside the audio
DOWNLOAD_TIMEOUT_S = 30  # per connection attempt and per read, not for the whole file
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


class Checksum(NamedTuple):
    algorithm: str  # a hashlib name
    value: str  # lower-case hex digest


# What a URL's publisher lists for it (Zenodo lists MD5: 208,468,073 bytes).
PUBLISHED_CHECKSUMS = {RAVDESS_URL: Checksum("md5", "bc696df654c87fed845eb13823edef8a")}


class DataError(SerError, RuntimeError):
    """The corpus could not be brought in; ``data/raw`` is unchanged."""


def default_source() -> str:
    """``$SER_CORPUS_SOURCE``, else the shared RAVDESS copy when present, else the RAVDESS URL."""
    if os.environ.get(SOURCE_ENV):
        return os.environ[SOURCE_ENV]
    return str(SHARED_RAVDESS) if SHARED_RAVDESS.is_dir() else RAVDESS_URL


def _corpus_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and (p.suffix.lower() in AUDIO_SUFFIXES or p.name in SIDE_FILES)
    )


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


def _checksum_for(url: str, sha256: str | None) -> Checksum:
    """The checksum a download from ``url`` must match: ``sha256`` if given, else a published one."""
    if sha256 is not None:
        if not SHA256_HEX.fullmatch(sha256):
            raise DataError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
        return Checksum("sha256", sha256.lower())
    if url in PUBLISHED_CHECKSUMS:
        return PUBLISHED_CHECKSUMS[url]
    raise DataError(
        f"{url}: no checksum to verify the download against; pass --sha256 with the "
        "archive's SHA-256 (as published by its provider, or `sha256sum` of a copy you trust)"
    )


def download(url: str, target: Path, expected: Checksum) -> None:
    """Download ``url`` to ``target`` with progress; raise DataError unless it is complete and matches ``expected``."""
    digest = hashlib.new(expected.algorithm)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
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
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise DataError(f"{url}: download failed ({error})") from None
    received = target.stat().st_size
    if size is not None and received != size:
        raise DataError(f"{url}: download truncated ({received} of {size} bytes)")
    actual = digest.hexdigest()
    if actual != expected.value:
        raise DataError(
            f"{url}: {expected.algorithm} mismatch (expected {expected.value}, got {actual}); "
            "nothing was installed"
        )
    log.info("downloaded %s (%d bytes, %s %s)", url, received, expected.algorithm, actual)


def install_archive(
    url: str, destination: Path, expected: Checksum, scratch_dir: Path
) -> tuple[int, int]:
    """Download and verify a zip in a temporary folder under ``scratch_dir``, unpack it there,
    then install its audio into ``destination``.

    ``scratch_dir`` must not be inside the DVC-tracked raw folder, so that a failed or
    interrupted download adds nothing to it.
    """
    scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix=".download-") as scratch:
        archive = Path(scratch) / "corpus.zip"
        download(url, archive, expected)
        unpacked = Path(scratch) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(unpacked)
        except (zipfile.BadZipFile, EOFError, zlib.error) as error:
            raise DataError(f"{url}: not a valid zip archive ({error})") from None
        return install_folder(unpacked, destination)


def fetch_corpus(source: str, raw_dir: Path, name: str, sha256: str | None = None) -> Path:
    """Bring the corpus at ``source`` (folder or zip URL) into ``raw_dir/name``.

    A URL is downloaded only when its checksum is known (``sha256``, or the one its
    publisher lists); ``raw_dir`` is left untouched unless download and checksum succeed.
    """
    destination = raw_dir / name
    if source.startswith(("http://", "https://")):
        expected = _checksum_for(source, sha256)
        copied, present = install_archive(source, destination, expected, raw_dir.parent)
    else:
        copied, present = install_folder(Path(source), destination)
    log.info("%s: %d file(s) copied, %d already present", destination, copied, present)
    return destination
