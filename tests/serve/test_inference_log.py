"""The inference log: its records (never the audio), day partitions, a background writer
that costs the request path well under a millisecond and whose failures are counted,
never raised; and the same records in PostgreSQL."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from ser import EMOTIONS
from ser.serve.inference_log import (
    PROBABILITY_COLUMNS,
    REFUSED,
    SCHEMA,
    InferenceLog,
    ModelIdentity,
    ParquetSink,
    content_version,
    record_of,
    sink_for,
)
from ser.serve.predict import NO_SPEECH, Answer
from ser.signal.speech import ClipStats

MODEL = ModelIdentity("ser-emotion", "0123456789ab")
STATS = ClipStats(2.0, 16_000, 1, -23.0, 0.0, 0.6, 1.2, 31.0, -21.0)
PROBABILITIES = np.array([0.1, 0.05, 0.05, 0.6, 0.1, 0.05, 0.05])


def answers() -> list[Answer]:
    return [
        Answer("secret/clip.wav", "angry", PROBABILITIES, None, STATS),
        Answer(1, NO_SPEECH, None, "no speech: 0.00 s of speech detected", STATS),
        Answer(2, None, None, "not readable audio (Format not recognised.)", None),
    ]


def test_a_record_holds_the_answer_and_the_audio_s_statistics_but_no_audio_or_name():
    when = datetime(2025, 6, 1, 12, tzinfo=UTC)
    angry, quiet, refused = (record_of(a, MODEL, "serve", when) for a in answers())
    assert list(angry) == SCHEMA.names
    assert "secret/clip.wav" not in map(str, angry.values())
    assert angry["label"] == "angry" and angry["confidence"] == 0.6
    assert [angry[c] for c in PROBABILITY_COLUMNS] == pytest.approx(PROBABILITIES)
    assert (angry["level_dbfs"], angry["speech_ratio"], angry["snr_db"]) == (-23.0, 0.6, 31.0)
    assert (angry["model"], angry["model_version"], angry["source"]) == (
        *vars(MODEL).values(),
        "serve",
    )
    assert quiet["label"] == NO_SPEECH and quiet["p_angry"] is None and quiet["confidence"] is None
    assert refused["label"] == REFUSED and refused["duration"] is None
    assert refused["reason"].startswith("not readable audio")
    assert len(PROBABILITY_COLUMNS) == len(EMOTIONS)


def test_parquet_records_are_partitioned_by_day_and_read_back_by_window(tmp_path):
    sink = ParquetSink(tmp_path / "log")
    late, early = datetime(2025, 6, 1, 23, 59, tzinfo=UTC), datetime(2025, 6, 2, 0, 1, tzinfo=UTC)
    sink.write([record_of(a, MODEL, "predict", late) for a in answers()])
    sink.write([record_of(a, MODEL, "predict", early) for a in answers()[:1]])
    days = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert days == ["date=2025-06-01", "date=2025-06-02"]
    assert all(f.suffix == ".parquet" for day in days for f in (tmp_path / "log" / day).iterdir())
    june_1 = sink.read(datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 2, tzinfo=UTC))
    assert june_1["label"].tolist() == ["angry", NO_SPEECH, REFUSED]
    both = sink.read(datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 3, tzinfo=UTC))
    assert len(both) == 4
    assert list(both.columns) == SCHEMA.names  # the partition key is not a column
    assert ParquetSink(tmp_path / "none").read(early - timedelta(days=1), early).empty


def test_records_queued_in_a_burst_are_all_written_by_the_background_thread(tmp_path):
    """(What recording costs the request path is benchmarks/pipeline_speed.py's to measure.)"""
    log = InferenceLog(ParquetSink(tmp_path), MODEL, "serve")
    batch = answers()[:1]
    for _ in range(2000):
        log.record(batch)
    log.close()
    assert log.written == 2000 and log.lost == 0
    written = ParquetSink(tmp_path).read(datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC))
    assert len(written) == 2000


class BrokenSink:
    def write(self, records):
        raise OSError("disk full")

    def read(self, start, end):
        return pd.DataFrame()


def test_a_failing_sink_is_counted_and_reported_never_raised(caplog):
    log = InferenceLog(BrokenSink(), MODEL, "serve")
    with caplog.at_level(logging.WARNING, logger="ser.serve.inference_log"):
        log.record(answers())
        log.close()
    assert (log.written, log.lost) == (0, 3)
    assert "3 record(s) lost (3 in all): OSError: disk full" in caplog.text
    assert log.summary() == "inference log: 0 record(s) written, 3 lost"


class StuckSink(BrokenSink):
    """A sink whose first write waits until released: the queue behind it fills."""

    def __init__(self):
        self.release = threading.Event()

    def write(self, records):
        self.release.wait(30)


def test_a_full_queue_drops_records_and_counts_them(caplog):
    sink = StuckSink()
    log = InferenceLog(sink, MODEL, "serve", max_batch=1, max_pending=2)
    with caplog.at_level(logging.WARNING, logger="ser.serve.inference_log"):
        for _ in range(10):
            log.record(answers()[:1])
    assert log.lost >= 7  # one in the stuck write, two queued: the rest are lost
    assert caplog.text.count(": Full: ") == log.lost
    sink.release.set()
    log.close()
    assert log.written + log.lost == 10


def test_the_version_names_the_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "classifier.json").write_text("{}")
    first = content_version(tmp_path / "a")
    (tmp_path / "a" / "classifier.json").write_text('{"kind": 1}')
    assert len(first) == 12 and content_version(tmp_path / "a") != first


def test_destinations_pick_their_sink(tmp_path):
    assert isinstance(sink_for(tmp_path), ParquetSink)
    assert type(sink_for("postgresql://ser@127.0.0.1:5432/ser")).__name__ == "PostgresSink"
