"""The inference log: one record per clip the deployed model is asked about, never the audio.

A record holds when, which model, what the audio was like (``ser.signal.speech.ClipStats``)
and what the model answered. ``ser monitor`` compares a window of it with the training
data. Records go to a day-partitioned Parquet folder (``<root>/date=2025-06-01/part-….parquet``,
one file per batch) or, when the destination is a ``postgresql://`` URL, to the table
``inference_log`` of that database (the team setup, docs/team.md).

The request path only builds the record and puts it on a queue; a background thread
writes batches. A failure to write never fails a prediction: the records are counted as
lost, and each failure is logged with the running count (``InferenceLog.lost``).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import queue
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ser import EMOTIONS, paths
from ser.models.bundle import Classifier
from ser.ops.atomic import write_parquet, write_with
from ser.serve.predict import Answer, answered
from ser.signal.speech import ClipStats

log = logging.getLogger(__name__)

LOG_ENV = "SER_INFERENCE_LOG"
"""Where the served model logs: a folder or a postgresql:// URL (unset: no log)."""
REFUSED = "refused"
"""The label of a clip the model could not use (unreadable, too long, …)."""
TABLE = "inference_log"
PROBABILITY_COLUMNS = [f"p_{emotion}" for emotion in EMOTIONS]
STAT_COLUMNS = [
    "duration",
    "sample_rate",
    "channels",
    "level_dbfs",
    "clipping_ratio",
    "speech_ratio",
    "speech_seconds",
    "snr_db",
    "high_band_db",
]
SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("duration", pa.float64()),
        ("sample_rate", pa.int64()),
        ("channels", pa.int64()),
        *((name, pa.float64()) for name in STAT_COLUMNS[3:]),
        ("label", pa.string()),
        ("reason", pa.string()),
        ("confidence", pa.float64()),
        *((name, pa.float64()) for name in PROBABILITY_COLUMNS),
    ]
)
PARTITIONING = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")


@dataclass(frozen=True)
class ModelIdentity:
    """Which model answered: its name and a version that names its exact files."""

    name: str
    version: str


def content_version(directory: Path) -> str:
    """The first 12 hex digits of a SHA-256 over every file of a saved classifier (names
    and bytes): the same files, the same version, wherever they were loaded from."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def record_of(answer: Answer, model: ModelIdentity, source: str, when: datetime) -> dict:
    """The log record of one answer: never the audio or its name."""
    stats = answer.stats.as_dict() if answer.stats else {}
    probabilities = (
        dict(zip(PROBABILITY_COLUMNS, answer.probabilities.tolist(), strict=True))
        if answer.probabilities is not None
        else {}
    )
    return {
        "time": when,
        "source": source,
        "model": model.name,
        "model_version": model.version,
        **{name: stats.get(name) for name in STAT_COLUMNS},
        "label": answer.label or REFUSED,
        "reason": answer.reason,
        "confidence": max(probabilities.values()) if probabilities else None,
        **{name: probabilities.get(name) for name in PROBABILITY_COLUMNS},
    }


class Sink(Protocol):
    def write(self, records: list[dict]) -> None: ...

    def read(self, start: datetime, end: datetime) -> pd.DataFrame: ...


class ParquetSink:
    """A folder of Parquet files, one folder per day (``date=YYYY-MM-DD``), one file per batch."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, records: list[dict]) -> None:
        table = pa.Table.from_pylist(records, schema=SCHEMA)
        days = pc.strftime(table["time"], format="%Y-%m-%d").to_pylist()
        for day in sorted(set(days)):
            rows = table.filter(pa.array([d == day for d in days]))
            name = f"part-{datetime.now(UTC):%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
            target = self.root / f"date={day}" / name
            write_with(target, lambda path, rows=rows: pq.write_table(rows, path))

    def read(self, start: datetime, end: datetime) -> pd.DataFrame:
        if not self.root.is_dir():
            return SCHEMA.empty_table().to_pandas()
        dataset = ds.dataset(self.root, format="parquet", partitioning=PARTITIONING, schema=SCHEMA)
        window = (ds.field("time") >= pa.scalar(start, SCHEMA.field("time").type)) & (
            ds.field("time") < pa.scalar(end, SCHEMA.field("time").type)
        )
        return dataset.to_table(filter=window).to_pandas()


class PostgresSink:
    """The table ``inference_log`` of a PostgreSQL database (created when missing)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection = None

    def connect(self):
        import psycopg

        if self.connection is None or self.connection.closed:
            self.connection = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            columns = ", ".join(f"{f.name} {sql_type(f.type)}" for f in SCHEMA)
            self.connection.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({columns})")
            self.connection.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE} (time)")
        return self.connection

    def write(self, records: list[dict]) -> None:
        names = SCHEMA.names
        statement = (
            f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"
        )
        try:
            with self.connect().cursor() as cursor:
                cursor.executemany(statement, [[r[n] for n in names] for r in records])
        except Exception:
            self.connection = None  # reconnect on the next batch
            raise

    def read(self, start: datetime, end: datetime) -> pd.DataFrame:
        query = f"SELECT {', '.join(SCHEMA.names)} FROM {TABLE} WHERE time >= %s AND time < %s"
        with self.connect().cursor() as cursor:
            rows = cursor.execute(query, (start, end)).fetchall()
        return pa.Table.from_pylist(
            [dict(zip(SCHEMA.names, row, strict=True)) for row in rows], schema=SCHEMA
        ).to_pandas()


def sql_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz"
    if pa.types.is_integer(arrow_type):
        return "bigint"
    return "double precision" if pa.types.is_floating(arrow_type) else "text"


def sink_for(destination: str | Path) -> Sink:
    """A PostgresSink for a ``postgresql://`` URL, else a ParquetSink of the folder."""
    text = str(destination)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresSink(text)
    return ParquetSink(Path(text))


class InferenceLog:
    """Records queued by the request path, written in batches by a background thread.

    ``record`` never raises and costs microseconds. Records that cannot be written (the
    sink fails, or the queue of ``max_pending`` records is full) are counted in ``lost``
    and logged with the running count.
    """

    def __init__(
        self,
        sink: Sink,
        model: ModelIdentity,
        source: str,
        flush_seconds: float = 1.0,
        max_batch: int = 1000,
        max_pending: int = 100_000,
    ) -> None:
        self.sink, self.model, self.source = sink, model, source
        self.flush_seconds, self.max_batch = flush_seconds, max_batch
        self.pending: queue.Queue[dict | None] = queue.Queue(max_pending)
        self.written = self.lost = 0
        self.thread = threading.Thread(target=self.run, name="inference-log", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def record(self, answers: Iterable[Answer]) -> None:
        """Queue one record per answer; never raises."""
        when = datetime.now(UTC)
        for answer in answers:
            try:
                self.pending.put_nowait(record_of(answer, self.model, self.source, when))
            except Exception as error:  # a full queue, an unexpected answer: count, go on
                self.count_lost(1, error)

    def count_lost(self, count: int, error: BaseException) -> None:
        self.lost += count
        log.warning(
            "inference log: %d record(s) lost (%d in all): %s: %s",
            count,
            self.lost,
            type(error).__name__,
            error,
        )

    def run(self) -> None:
        """Write batches of up to ``max_batch`` queued records until ``close``'s sentinel."""
        done = False
        while not done:
            try:
                item = self.pending.get(timeout=self.flush_seconds)
            except queue.Empty:
                continue
            batch: list[dict] = []
            while item is not None:
                batch.append(item)
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = self.pending.get_nowait()
                except queue.Empty:
                    break
            done = item is None
            if batch:
                self.write(batch)

    def write(self, batch: list[dict]) -> None:
        try:
            self.sink.write(batch)
            self.written += len(batch)
        except Exception as error:
            self.count_lost(len(batch), error)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the thread (also run at exit)."""
        if self.thread.is_alive():
            self.pending.put(None)
            self.thread.join(timeout)
        atexit.unregister(self.close)

    def summary(self) -> str:
        return f"inference log: {self.written} record(s) written, {self.lost} lost"


def open_log(
    destination: str | Path | None, model: ModelIdentity, source: str
) -> InferenceLog | None:
    """An InferenceLog to ``destination``, else to ``$SER_INFERENCE_LOG``, else None."""
    destination = destination or os.environ.get(LOG_ENV)
    return InferenceLog(sink_for(destination), model, source) if destination else None


def reference_table(
    stats: pd.DataFrame, answers: dict[str, np.ndarray], classifier: Classifier
) -> pd.DataFrame:
    """What the log would hold for clips of known provenance: their statistics (one row per
    clip, as ``corpus.screen`` measured them) and, for the clips in ``answers`` (path ->
    calibrated probabilities), the classifier's answers; the other rows have no label.
    ``ser monitor`` compares the log with it."""
    identity = ModelIdentity("reference", "")
    records = []
    for values in stats.to_dict("records"):
        path, clip = values.pop("path"), ClipStats(**values)
        row = answers.get(path)
        answer = (
            answered(path, clip, row, classifier)
            if row is not None
            else Answer(path, None, None, None, clip)
        )
        record = record_of(answer, identity, "reference", None)
        records.append(record if row is not None else {**record, "label": None})
    return pa.Table.from_pylist(records, schema=SCHEMA).to_pandas()


def write_reference(
    rows: pd.DataFrame,
    answered_rows: pd.DataFrame,
    probabilities: np.ndarray,
    classifier: Classifier,
) -> None:
    """Write ``models/monitor_reference.parquet``: the statistics of the clips of ``rows``
    (training and validation speakers, from ``data/processed/clip_stats.parquet``), with the
    answers of the calibrated ``probabilities`` of ``answered_rows`` (the validation
    speakers', from the model fitted without them)."""
    if not paths.CLIP_STATS.is_file():
        log.warning("%s is missing (run preprocess): no monitor reference", paths.CLIP_STATS)
        return
    stats = pd.read_parquet(paths.CLIP_STATS)
    stats = stats[stats["path"].isin(set(rows["path"]))].sort_values("path")
    answers = dict(zip(answered_rows["path"], probabilities, strict=True))
    write_parquet(paths.MONITOR_REFERENCE, reference_table(stats, answers, classifier))
