"""``ser monitor``: does a window of the inference log still look like the training data?

The reference is ``monitor_reference.parquet`` beside the model (written by the train
stage): the training and validation speakers' clips as preprocess measured them, and for
the validation speakers' clips the answers of the model fitted without them. A window of the log (the last ``monitor.window_days``) is
compared with it by Evidently, column by column (``monitor.drift_method``, a distance
above ``monitor.drift_threshold`` is drift) and on the answers (the labels' distribution
against ``monitor.label_drift_threshold``, the share of ``no_speech``). The window is flagged, and the command exits 1, when more
than ``monitor.max_drifted_share`` of the audio columns drift, when the labels drift, or
when more than ``monitor.max_no_speech_share`` of the clips hold no speech.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from ser.config import MonitorParams
from ser.ops.atomic import write_json, write_with
from ser.serve.inference_log import REFUSED, sink_for
from ser.serve.predict import NO_SPEECH

log = logging.getLogger(__name__)

AUDIO_COLUMNS = [
    "duration",
    "sample_rate",
    "level_dbfs",
    "clipping_ratio",
    "speech_ratio",
    "snr_db",
    "high_band_db",
]
"""What the clips sound like (``channels`` is left out: almost always 1, so no distribution)."""
LABEL, CONFIDENCE = "label", "confidence"
LABEL_DRIFT_METHOD = "jensenshannon"


@dataclass
class Verdict:
    """What ``ser monitor`` found in a window of the log."""

    start: datetime
    end: datetime
    clips: int
    reference_clips: int
    scores: dict[str, float] = field(default_factory=dict)  # column -> drift score
    drifted: list[str] = field(default_factory=list)  # columns whose score passed the threshold
    no_speech_share: float = 0.0
    refused_share: float = 0.0
    flags: list[str] = field(default_factory=list)  # why the window counts as drift

    @property
    def drift(self) -> bool:
        return bool(self.flags)

    def as_dict(self) -> dict[str, object]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "clips": self.clips,
            "reference_clips": self.reference_clips,
            "drift": self.drift,
            "flags": self.flags,
            "drifted_columns": self.drifted,
            "drifted_share": len([c for c in self.drifted if c in AUDIO_COLUMNS])
            / len(AUDIO_COLUMNS),
            "no_speech_share": self.no_speech_share,
            "refused_share": self.refused_share,
            "scores": self.scores,
        }

    def mlflow_metrics(self) -> dict[str, float]:
        summary = self.as_dict()
        return {
            "clips": self.clips,
            "drift": float(self.drift),
            "drifted_share": summary["drifted_share"],
            "no_speech_share": self.no_speech_share,
            "refused_share": self.refused_share,
            **{f"drift_score.{column}": score for column, score in self.scores.items()},
        }


def import_evidently():
    """Evidently's Report API. Evidently 0.7.23 still imports a private pandas helper that
    pandas 3.1 removed (``infer_dtype_from_object``, used only by its legacy column-type
    test); the same one-line function is put back first when missing."""
    import pandas.core.dtypes.common as pandas_common

    if not hasattr(pandas_common, "infer_dtype_from_object"):
        pandas_common.infer_dtype_from_object = lambda dtype: pandas_common.pandas_dtype(dtype).type
    import evidently
    from evidently import metrics

    return evidently, metrics


def compare(reference: pd.DataFrame, current: pd.DataFrame, params: MonitorParams):
    """Evidently's snapshot of ``current`` against ``reference``, and per column its drift
    score and whether it drifted (the metric's own test failed)."""
    evidently, metrics = import_evidently()
    numeric = [*AUDIO_COLUMNS, CONFIDENCE]
    definition = evidently.DataDefinition(numerical_columns=numeric, categorical_columns=[LABEL])
    checks = [
        metrics.ValueDrift(
            column=column, method=params.drift_method, threshold=params.drift_threshold
        )
        for column in numeric
    ]
    checks.append(
        metrics.ValueDrift(
            column=LABEL, method=LABEL_DRIFT_METHOD, threshold=params.label_drift_threshold
        )
    )
    checks.append(metrics.CategoryCount(column=LABEL, categories=[NO_SPEECH]))
    report = evidently.Report(checks, include_tests=True)
    snapshot = report.run(
        evidently.Dataset.from_pandas(current, data_definition=definition),
        evidently.Dataset.from_pandas(reference, data_definition=definition),
    )
    result = snapshot.dict()
    columns = {
        m["id"]: m["config"]["column"]
        for m in result["metrics"]
        if m["config"]["type"].endswith(":ValueDrift")
    }
    scores = {columns[m["id"]]: float(m["value"]) for m in result["metrics"] if m["id"] in columns}
    failed = {
        columns[t["metric_config"]["metric_id"]]
        for t in result["tests"]
        if t["metric_config"]["metric_id"] in columns and t["status"] == "FAIL"
    }
    return snapshot, scores, [column for column in scores if column in failed]


def judge(
    reference: pd.DataFrame,
    window: pd.DataFrame,
    start: datetime,
    end: datetime,
    params: MonitorParams,
):
    """The Verdict on ``window`` (log records) and Evidently's snapshot (None when the window
    holds fewer than ``monitor.min_clips`` clips: no verdict)."""
    verdict = Verdict(start, end, len(window), len(reference))
    if len(window) < params.min_clips:
        log.warning(
            "%d clip(s) logged between %s and %s, fewer than monitor.min_clips (%d): no verdict",
            len(window),
            start,
            end,
            params.min_clips,
        )
        return verdict, None
    labels = window[LABEL]
    verdict.no_speech_share = float((labels == NO_SPEECH).mean())
    verdict.refused_share = float((labels == REFUSED).mean())
    heard = window[labels != REFUSED]  # a refused clip has no statistics
    snapshot, verdict.scores, verdict.drifted = compare(reference, heard, params)
    drifted_share = len([c for c in verdict.drifted if c in AUDIO_COLUMNS]) / len(AUDIO_COLUMNS)
    if drifted_share > params.max_drifted_share:
        audio = ", ".join(c for c in verdict.drifted if c in AUDIO_COLUMNS)
        verdict.flags.append(
            f"{drifted_share:.0%} of the audio columns drifted ({audio}; "
            f"monitor.max_drifted_share is {params.max_drifted_share:.0%})"
        )
    if LABEL in verdict.drifted:
        verdict.flags.append(
            f"the answers drifted ({LABEL_DRIFT_METHOD} {verdict.scores[LABEL]:.3f} > "
            f"monitor.label_drift_threshold {params.label_drift_threshold})"
        )
    if verdict.no_speech_share > params.max_no_speech_share:
        verdict.flags.append(
            f"{verdict.no_speech_share:.0%} of the clips hold no speech "
            f"(monitor.max_no_speech_share is {params.max_no_speech_share:.0%})"
        )
    return verdict, snapshot


def window_of(end: datetime | None, days: float) -> tuple[datetime, datetime]:
    end = end or datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    return end - timedelta(days=days), end


def monitor(
    params: MonitorParams,
    reference_path: Path,
    out_dir: Path,
    destination: str | None = None,
    end: datetime | None = None,
) -> Verdict:
    """Judge the window of the log that ends at ``end`` (default now); write
    ``<out_dir>/monitor.html`` (Evidently's report) and ``monitor.json`` (the verdict)."""
    if not reference_path.is_file():
        raise FileNotFoundError(
            f"{reference_path}: no monitor reference (the train stage writes it beside the model)"
        )
    start, end = window_of(end, params.window_days)
    window = sink_for(destination or params.log).read(start, end)
    verdict, snapshot = judge(pd.read_parquet(reference_path), window, start, end, params)
    write_json(out_dir / "monitor.json", verdict.as_dict())
    if snapshot is not None:
        write_with(out_dir / "monitor.html", lambda path: snapshot.save_html(str(path)))
    for flag in verdict.flags:
        log.error("drift: %s", flag)
    log.info("%s", json.dumps(verdict.mlflow_metrics()))
    return verdict
