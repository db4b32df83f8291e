"""Atomic writes: a failing stage never leaves a half-written output behind."""

from __future__ import annotations

import glob
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

_STARTED = time.time()
"""About when this process started (when this module was imported)."""


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries of ``target`` not modified since this process started.

    A killed writer (SIGKILL, power loss) leaves its ``.{stem}.XXXXXXXX.tmp{suffix}`` behind;
    the next write of the same target removes it. Writing one target from two processes at
    once is not supported: a writer that has not touched its temporary since this process
    started is taken for dead.
    """
    pattern = f".{glob.escape(target.stem)}.{'?' * 8}.tmp{glob.escape(target.suffix)}"
    for stale in target.parent.glob(pattern):
        with suppress(FileNotFoundError):
            if stale.stat().st_mtime < _STARTED:
                stale.unlink()
                log.info("removed %s, left behind by an interrupted write", stale)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a new empty file beside ``target``; move it into place only on success.

    The file is created as ``open()`` would (mode 0666 less the umask), so other users read
    outputs as they read any file. Temporaries a killed run left for ``target`` are removed
    first (``_remove_stale_temporaries``).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    temporary = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
    temporary.touch(exist_ok=False)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_with(target: Path, writer: Callable[[Path], object]) -> None:
    """Run ``writer(temporary_path)`` and atomically move the result to ``target``."""
    with atomic_path(target) as temporary:
        writer(temporary)


def write_json(target: Path, payload: object) -> None:
    write_with(target, lambda path: path.write_text(json.dumps(payload, indent=2) + "\n"))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_parquet(target: Path, frame: pd.DataFrame) -> None:
    write_with(target, lambda path: frame.to_parquet(path, index=False))
