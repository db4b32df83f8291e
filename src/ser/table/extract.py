"""Parallel, cached feature extraction for the manifest's clips and their augmented copies.

Each clip variant gets the vectors of ``features.sets`` and its log-mel frames
(``LOGMEL``), each cached on its own under a hash of everything that determines it. An
augmented copy is made from the decoded recording, then conditioned like any clip
(``ser.signal.augment``); ``babble`` mixes in clips of other training speakers, chosen
for each clip by rendezvous hashing of the contents, so adding clips rarely changes the
choice of another clip.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ser import ORIGINAL
from ser.config import AugmentKind, Params
from ser.ops.atomic import write_with
from ser.ops.kernels import numpy_targets
from ser.paths import workspace_root
from ser.signal.audio import BadAudio, condition, decode, downmix, resample
from ser.signal.augment import copy_seed, recipe_augmenter
from ser.signal.features import feature_names, logmel_frames, set_features

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: condition() removes DC before its level checks
"""Bump when feature code changes in a way params do not capture."""
LOGMEL = "logmel"
"""The cache's name for a variant's log-mel frames, beside the vector sets."""


@dataclass(frozen=True)
class Variant:
    """One feature vector to produce: the clip as is (``copy`` = -1) or an augmented copy."""

    copy: int
    recipe: tuple[AugmentKind, ...]

    @property
    def name(self) -> str:
        return "+".join(self.recipe) or ORIGINAL


@dataclass(frozen=True)
class ClipJob:
    path: str
    sha256: str
    variants: tuple[Variant, ...]
    cache_keys: tuple[tuple[str, ...], ...]  # per variant, one key per name of cached_names
    talkers: tuple[str, ...] = ()  # the files ``babble`` mixes in (other training speakers)


def variants_for(split: str, params: Params) -> tuple[Variant, ...]:
    """The original clip, plus one augmented copy per recipe for training clips only."""
    original = Variant(-1, ())
    if split != "train":
        return (original,)
    return (original, *(Variant(i, tuple(r)) for i, r in enumerate(params.augment.copies)))


def cached_names(params: Params) -> list[str]:
    """What is cached per variant: each vector set of ``features.sets``, then the frames."""
    return [*params.features.sets, LOGMEL]


def _set_spec(feature_set: str, params: Params) -> dict[str, object]:
    if feature_set == LOGMEL:
        return params.frames.model_dump(mode="json")
    if feature_set == "seed":
        return params.features.model_dump(
            mode="json", exclude={"sets", "speaker_norm", "workers", "cache_dir"}
        )
    return {
        "opensmile": importlib.metadata.version("opensmile"),
        "sample_rate": params.features.sample_rate,
    }


TALKERS_PER_CLIP = 3
"""How many other training speakers' clips a clip's ``babble`` copy draws its talker from."""


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each value (SplitMix64's finaliser)."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


TALKER_POOL = "talker_pool"
"""An optional manifest column: babble draws only from clips with the same value (the
benchmark's folds: a clip trains exactly when the other speakers of its fold do)."""


def babble_talkers(training: pd.DataFrame) -> dict[str, list[int]]:
    """For each training clip (by path), the rows of ``training`` whose clips its ``babble``
    copy may mix in: the ``TALKERS_PER_CLIP`` clips of other speakers (of the same
    ``TALKER_POOL``, when given) that rank first for it (rendezvous hashing of the contents)."""
    keys = np.array([int(sha[:16], 16) for sha in training["sha256"]], dtype=np.uint64)
    speakers = training["speaker"].to_numpy()
    pools = training[TALKER_POOL].to_numpy() if TALKER_POOL in training else np.zeros(len(keys))
    chosen = {}
    for path, key, speaker, pool in zip(training["path"], keys, speakers, pools, strict=True):
        scores = _splitmix64(keys ^ key)
        scores[(speakers == speaker) | (pools != pool)] = np.iinfo(np.uint64).max
        ranked = np.argsort(scores, kind="stable")[:TALKERS_PER_CLIP]
        chosen[path] = [int(i) for i in ranked if scores[i] != np.iinfo(np.uint64).max]
    return chosen


def cache_key(
    sha256: str, variant: Variant, params: Params, feature_set: str, talkers: tuple[str, ...] = ()
) -> str:
    """Content hash of everything that determines one set's vector for one variant of a clip
    (``talkers``: the contents of the clips a ``babble`` copy draws from)."""
    spec = {
        "version": CACHE_VERSION,
        "audio": params.audio.model_dump(mode="json"),
        "set": feature_set,
        "features": _set_spec(feature_set, params),
        "clip": sha256,
        "copy": variant.copy,
        "recipe": list(variant.recipe),
        "kernels": numpy_targets(),  # an unpinned AVX-512 run caches other last bits
    }
    if variant.recipe:
        spec["augment"] = params.augment.model_dump(mode="json", exclude={"copies"})
    if "babble" in variant.recipe:
        spec["talkers"] = list(talkers)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.npy"


def cache_root(params: Params) -> Path:
    """The feature cache, shared by the workspace and its queued-experiment copies."""
    return workspace_root() / params.features.cache_dir


def _limit_threads() -> None:
    """Worker initializer: one BLAS/OpenMP thread per process avoids oversubscription."""
    os.environ["OMP_NUM_THREADS"] = "1"
    threadpool_limits(1)


def _compute(name: str, signal: np.ndarray, params: Params) -> np.ndarray:
    """One set's vector, or the frames (``LOGMEL``), of one conditioned signal."""
    rate = params.audio.sample_rate
    if name == LOGMEL:
        return logmel_frames(signal, rate, params.frames)
    return set_features(name, signal, rate, params.features)


def _copy_of(
    samples: np.ndarray, sample_rate: int, variant: Variant, job: ClipJob, params: Params
) -> np.ndarray:
    """The conditioned augmented copy of a decoded clip; the conditioned original, with a log
    line, when the copy is no usable speech (e.g. made silent by a low level)."""
    rate = params.audio.sample_rate
    recording = resample(downmix(samples), sample_rate, rate)
    augment = recipe_augmenter(variant.recipe, params.augment, job.talkers)
    copy = augment(recording, rate, copy_seed(params.augment.seed, job.sha256, variant.copy))
    try:
        return condition(copy, rate, params.audio)
    except BadAudio as error:
        log.info("%s: copy %s unusable (%s); the original stands in", job.path, variant.name, error)
        return condition(samples, sample_rate, params.audio)


def _extract(job: ClipJob, params: Params) -> str | None:
    """Compute and cache every missing variant of one clip; return an error or None."""
    try:
        samples, sample_rate = decode(Path(job.path), params.audio.max_duration)
        original = condition(samples, sample_rate, params.audio)
    except BadAudio as error:
        return str(error)
    cache_dir = cache_root(params)
    for variant, keys in zip(job.variants, job.cache_keys, strict=True):
        missing = [
            (name, key)
            for name, key in zip(cached_names(params), keys, strict=True)
            if not _cache_file(cache_dir, key).is_file()
        ]
        if not missing:
            continue
        signal = (
            _copy_of(samples, sample_rate, variant, job, params) if variant.recipe else original
        )
        for name, key in missing:
            values = _compute(name, signal, params)
            if not np.all(np.isfinite(values)):
                return f"{name} features are not finite ({variant.name})"
            write_with(_cache_file(cache_dir, key), lambda path, v=values: np.save(path, v))
    return None


def _run_jobs(jobs: list[ClipJob], params: Params) -> dict[str, str]:
    """Run jobs in ``features.workers`` processes; return {path: error} for failed clips."""
    errors: dict[str, str] = {}
    progress = dict(desc="extracting", unit="clip", total=len(jobs), disable=None)
    if params.features.workers == 1 or len(jobs) < 2:
        with threadpool_limits(1):
            results = [_extract(job, params) for job in tqdm(jobs, **progress)]
    else:
        with ProcessPoolExecutor(params.features.workers, initializer=_limit_threads) as pool:
            chunk = max(1, min(16, len(jobs) // (4 * params.features.workers)))
            mapped = pool.map(_extract, jobs, [params] * len(jobs), chunksize=chunk)
            results = list(tqdm(mapped, **progress))
    for job, error in zip(jobs, results, strict=True):
        if error is not None:
            errors[job.path] = error
    return errors


@dataclass
class ExtractionStats:
    clips: int
    vectors: int
    computed_clips: int
    seconds: float

    @property
    def clips_per_second(self) -> float:
        return self.computed_clips / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Extracted:
    """What ``extract_features`` made of a manifest."""

    table: pd.DataFrame  # metadata + one column per feature, one row per variant
    frames: list[np.ndarray]  # the log-mel frames of each row of ``table``
    errors: dict[str, str]  # {path: why} for clips that could not be used
    stats: ExtractionStats


def extract_features(manifest: pd.DataFrame, params: Params) -> Extracted:
    """Vectors and frames of every usable clip of ``manifest`` (which needs a ``split``
    column) and of the augmented copies of its training clips."""
    jobs, pending = [], []
    cache_dir = cache_root(params)
    training = manifest[manifest["split"] == "train"].reset_index(drop=True)
    babble = any("babble" in recipe for recipe in params.augment.copies)
    talkers = babble_talkers(training) if babble and len(training) else {}
    alone = sum(not chosen for chosen in talkers.values())
    if alone:
        log.warning(
            "augment.copies: %d training clip(s) have no other training speaker to mix in; "
            "their babble copies are made without babble",
            alone,
        )
    for row in manifest.itertuples(index=False):
        variants = variants_for(row.split, params)
        chosen = training.iloc[talkers.get(row.path, [])]
        shas = tuple(chosen["sha256"])
        keys = tuple(
            tuple(cache_key(row.sha256, v, params, name, shas) for name in cached_names(params))
            for v in variants
        )
        job = ClipJob(row.path, row.sha256, variants, keys, tuple(chosen["path"]))
        jobs.append(job)
        if not all(_cache_file(cache_dir, key).is_file() for per_set in keys for key in per_set):
            pending.append(job)
    log.info(
        "%d clips, %d to extract, %d cached", len(jobs), len(pending), len(jobs) - len(pending)
    )
    started = time.perf_counter()
    errors = _run_jobs(pending, params)
    stats = ExtractionStats(len(jobs), 0, len(pending), time.perf_counter() - started)

    rows, vectors, frames = [], [], []
    meta = manifest.drop(
        columns=["duration", "sample_rate", "channels", "sha256", TALKER_POOL], errors="ignore"
    )
    for job, record in zip(jobs, meta.to_dict("records"), strict=True):
        if job.path in errors:
            continue
        for variant, keys in zip(job.variants, job.cache_keys, strict=True):
            rows.append({**record, "augmentation": variant.name})
            *set_keys, frames_key = keys
            vectors.append(np.concatenate([np.load(_cache_file(cache_dir, k)) for k in set_keys]))
            frames.append(np.load(_cache_file(cache_dir, frames_key)))
    stats.vectors = len(rows)
    names = feature_names(params.features)
    values = np.vstack(vectors) if vectors else np.empty((0, len(names)), np.float32)
    table = pd.concat(
        [
            pd.DataFrame(rows, columns=[*meta.columns, "augmentation"]),
            pd.DataFrame(values, columns=names),
        ],
        axis=1,
    )
    return Extracted(table, frames, errors, stats)
