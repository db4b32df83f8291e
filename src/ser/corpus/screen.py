"""Screening the corpus with the speech gate: what every clip sounds like, and which hold
too little speech to train on.

The statistics are those the inference log records in production
(``ser.signal.speech.ClipStats``), so ``ser monitor`` can compare the two.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ser.config import Params
from ser.corpus.manifest import Problem
from ser.signal.audio import BadAudio, decode, require_finite
from ser.signal.speech import ClipStats, describe, no_speech_reason

log = logging.getLogger(__name__)

STATS_COLUMNS = ["path", *ClipStats.__dataclass_fields__]


def clip_stats(path: str, params: Params) -> ClipStats | str:
    """The statistics of one file, or why it cannot be read."""
    try:
        samples, rate = decode(Path(path), params.audio.max_duration)
        require_finite(samples)
    except (BadAudio, OSError) as error:
        return str(error)
    return describe(samples, rate, params.speech.threshold)


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"


def screen(manifest: pd.DataFrame, params: Params) -> tuple[pd.DataFrame, list[Problem]]:
    """The statistics of every clip of ``manifest`` (one row per readable clip), and the
    clips to leave out: unreadable, or with less speech than ``speech.min_speech_seconds``."""
    paths = manifest["path"].tolist()
    progress = dict(desc="screening", unit="clip", total=len(paths), disable=None)
    workers = min(params.features.workers, max(1, len(paths)))
    if workers == 1:
        results = [clip_stats(path, params) for path in tqdm(paths, **progress)]
    else:
        with ProcessPoolExecutor(workers, initializer=_one_thread) as pool:
            chunk = max(1, min(16, len(paths) // (4 * workers)))
            mapped = pool.map(clip_stats, paths, [params] * len(paths), chunksize=chunk)
            results = list(tqdm(mapped, **progress))
    rows, problems = [], []
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, str):
            problems.append(Problem(path, result))
            continue
        rows.append({"path": path, **result.as_dict()})
        if reason := no_speech_reason(result, params.speech):
            problems.append(Problem(path, reason))
    for problem in problems:
        log.warning("skipping %s: %s", problem.path, problem.reason)
    return pd.DataFrame(rows, columns=STATS_COLUMNS), problems
