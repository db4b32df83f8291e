"""``mlflow models serve`` of a registered model, started for real on 127.0.0.1 (once for the
module): answers are ``ser predict``'s, bad requests get a 4xx saying what is wrong and the
server stays up, and the load benchmark measures it."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, audio_bytes, synth_clip, tone, write_audio

from ser.models.bundle import Classifier
from ser.serve.predict import predict_files

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))

from serving import ScoringServer, invocation, measure_load, post, register_champion

pytestmark = pytest.mark.slow  # a real scoring server: TensorFlow loads in it for half a minute

NAME = "ser-emotion-test"


@pytest.fixture(scope="module")
def server(
    trained_models: dict[str, Path], empty_mlflow_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScoringServer]:
    """The tiny spectrogram CNN registered with alias champion in a store of its own, served."""
    root = tmp_path_factory.mktemp("serving")
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    store = f"sqlite:///{root / 'mlflow.db'}"
    model = register_champion(trained_models["spectrogram_cnn"], store, root / "mlartifacts", NAME)
    with ScoringServer(model, store, root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Speech-like clips of three emotions, as WAV and as FLAC."""
    folder = tmp_path_factory.mktemp("clips")
    return [
        write_audio(folder / f"clip{emotion}.{suffix}", synth_clip(emotion, 1, 0))
        for emotion, suffix in ((0, "wav"), (3, "flac"), (5, "wav"))
    ]


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def predictions(text: str) -> list[dict[str, object]]:
    return json.loads(text)["predictions"]


def assert_same_as_ser_predict(answer: list[dict[str, object]], files: list[Path], model: Path):
    classifier = Classifier.load(model)
    expected = list(predict_files(files, classifier, batch_size=len(files)))
    assert len(answer) == len(expected)
    for row, expected_answer in zip(answer, expected, strict=True):
        assert not expected_answer.refused, f"{expected_answer.key}: {expected_answer.reason}"
        assert set(row) == {"label", "reason", "speech_ratio", *classifier.classes}
        assert row["label"] == expected_answer.label
        assert row["reason"] is None
        assert row["speech_ratio"] == pytest.approx(expected_answer.stats.speech_ratio)
        served = [row[name] for name in classifier.classes]
        np.testing.assert_allclose(served, expected_answer.probabilities, rtol=0, atol=1e-5)


def test_records_are_answered_as_ser_predict_does(server, clip_files, trained_models):
    body = invocation([path.read_bytes() for path in clip_files])
    status, text = post(server.url, body)
    assert status == 200, text
    assert_same_as_ser_predict(predictions(text), clip_files, trained_models["spectrogram_cnn"])


def test_the_split_orientation_is_answered_the_same(server, clip_files, trained_models):
    rows = [[encoded(path.read_bytes())] for path in clip_files]
    body = json.dumps({"dataframe_split": {"columns": ["audio"], "data": rows}}).encode()
    status, text = post(server.url, body)
    assert status == 200, text
    assert_same_as_ser_predict(predictions(text), clip_files, trained_models["spectrogram_cnn"])


GOOD = audio_bytes(synth_clip(2, 1, 1))
FLAC = audio_bytes(synth_clip(4, 2, 0), audio_format="FLAC")


def records(*values: object) -> bytes:
    return json.dumps({"dataframe_records": [{"audio": value} for value in values]}).encode()


BAD_REQUESTS = {
    # name: (body, content type, status, a part of the message)
    "not audio": (
        records(encoded(b"plain text, not audio")),
        None,
        400,
        "row 0: not readable audio",
    ),
    "no rows": (records(), None, 400, "missing inputs ['audio']"),
    "no rows, split": (
        json.dumps({"dataframe_split": {"columns": ["audio"], "data": []}}).encode(),
        None,
        400,
        "no clips: the request has no rows",
    ),
    "empty bytes": (records(""), None, 400, "row 0: empty: no bytes"),
    "truncated FLAC": (records(encoded(FLAC[: len(FLAC) // 2])), None, 400, "row 0: not readable"),
    "truncated WAV": (records(encoded(GOOD[: len(GOOD) // 2])), None, 400, "row 0: "),
    "WAV header only": (records(encoded(GOOD[:44])), None, 400, "row 0: empty: no audio frames"),
    "too long": (
        records(encoded(audio_bytes(tone(61, sample_rate=8000), 8000))),
        None,
        400,
        "row 0: too long: 61.0 s (audio.max_duration is 60.0 s)",
    ),
    "second row bad": (records(encoded(GOOD), encoded(b"RIFF")), None, 400, "row 1: "),
    "no audio column": (
        json.dumps({"dataframe_records": [{"sound": encoded(GOOD)}]}).encode(),
        None,
        400,
        "missing inputs ['audio']",
    ),
    "a number": (records(42), None, 400, "Failed to convert column audio"),
    "null": (records(None), None, 400, "Failed to convert column audio"),
    "not base64": (records("this is not base64!"), None, 400, "Failed to convert column audio"),
    "tf-serving inputs": (
        json.dumps({"inputs": {"audio": [encoded(GOOD)]}}).encode(),
        None,
        400,
        "row 0: ",
    ),
    "no format key": (
        json.dumps({"audio": [encoded(GOOD)]}).encode(),
        None,
        400,
        "exactly one of the input fields",
    ),
    "a JSON list": (json.dumps([encoded(GOOD)]).encode(), None, 400, "Received a list"),
    "not JSON": (b'{"dataframe_records": [', None, 400, "valid JSON"),
    "not UTF-8": (GOOD, None, 400, "valid JSON"),
    "audio as the body": (GOOD, "audio/wav", 415, "only supports the following content types"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_a_bad_request_gets_a_4xx_naming_the_problem_and_the_server_stays_up(server, name):
    body, content_type, expected_status, expected_message = BAD_REQUESTS[name]
    status, text = post(server.url, body, content_type or "application/json")
    assert status == expected_status, text[:2000]
    if status == 415:  # MLflow answers an unsupported content type in plain text
        message = text
    else:
        answer = json.loads(text)
        assert answer["error_code"] in {"INVALID_PARAMETER_VALUE", "BAD_REQUEST"}
        message = answer["message"]
    assert expected_message in message
    assert server.alive()
    status, text = post(server.url, invocation([GOOD]))
    assert status == 200, text
    assert len(predictions(text)) == 1


def test_the_load_benchmark_counts_every_request(server):
    bodies = [invocation([GOOD]), invocation([FLAC])]
    result = measure_load(server.url, bodies, clients=3, requests=9)
    assert result["requests"] == 9
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["max_ms"]
    assert result["requests_per_s"] == pytest.approx(9 / result["seconds"])


def test_the_load_benchmark_fails_on_a_refused_request(server):
    with pytest.raises(RuntimeError, match="1 of 2 requests failed"):
        measure_load(server.url, [invocation([GOOD]), records("")], clients=2, requests=2)
