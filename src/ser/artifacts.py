"""Atomic writes: a failing stage never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it into place only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}"
    )
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


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
