"""The MLflow Model of a trained classifier: audio bytes in, ``ser predict``'s answer out."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile
from conftest import SAMPLE_RATE, audio_bytes, noise, tone, write_audio

from ser import EMOTIONS
from ser.cli import main
from ser.config import SpeechParams
from ser.models.bundle import Classifier
from ser.serve.mlflow_model import (
    AUDIO_COLUMN,
    LABEL_COLUMN,
    REASON_COLUMN,
    SPEECH_RATIO_COLUMN,
    RequestError,
    classifier_dir,
    example_clip,
    log_model,
    predict_table,
)
from ser.serve.predict import NO_SPEECH, predict_files

NAME = "ser-test"
LOGGED_KINDS = ("spectrogram_cnn", "logreg")  # one per input: frames, clip features


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A tracking store of its own, named by MLFLOW_TRACKING_URI as users name a server."""
    folder = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.create_experiment("serving", artifact_location=(folder / "artifacts").as_uri())
        mlflow.set_experiment("serving")
        yield uri


@pytest.fixture(scope="module")
def logged(store, trained_models) -> dict[str, mlflow.models.model.ModelInfo]:
    """Each kind's tiny model logged and registered as a version of NAME, in a run of its own."""
    infos = {}
    for kind in LOGGED_KINDS:
        with mlflow.start_run():
            infos[kind] = log_model(trained_models[kind], registered_model=NAME)
    return infos


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    return [
        write_audio(folder / "a.wav", tone(0.8, 200)),
        write_audio(folder / "b.flac", noise(0.9, 0.1)),
        write_audio(
            folder / "c.wav", np.stack([tone(0.8, 300, sample_rate=44_100)] * 2, 1), 44_100
        ),
    ]


def audio_table(files: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({AUDIO_COLUMN: [path.read_bytes() for path in files]})


@pytest.mark.parametrize("kind", LOGGED_KINDS)
def test_the_loaded_mlflow_model_answers_exactly_as_ser_predict(
    logged, trained_models, kind, clip_files
):
    expected = list(predict_files(clip_files, Classifier.load(trained_models[kind])))
    answer = mlflow.pyfunc.load_model(logged[kind].model_uri).predict(audio_table(clip_files))
    assert list(answer.columns) == [LABEL_COLUMN, REASON_COLUMN, SPEECH_RATIO_COLUMN, *EMOTIONS]
    assert answer[LABEL_COLUMN].tolist() == [a.label for a in expected]
    assert answer[REASON_COLUMN].tolist() == [None] * len(expected)
    assert answer[SPEECH_RATIO_COLUMN].tolist() == [a.stats.speech_ratio for a in expected]
    np.testing.assert_allclose(
        answer[list(EMOTIONS)].to_numpy(), np.vstack([a.probabilities for a in expected]), atol=1e-6
    )


def test_the_model_carries_a_signature_and_a_request_example(logged):
    info = logged["spectrogram_cnn"]
    assert info.signature.inputs.to_dict() == [
        {"type": "binary", "name": AUDIO_COLUMN, "required": True}
    ]
    outputs = info.signature.outputs.to_dict()
    assert [c["name"] for c in outputs] == [
        LABEL_COLUMN,
        REASON_COLUMN,
        SPEECH_RATIO_COLUMN,
        *EMOTIONS,
    ]
    optional = {c["name"] for c in outputs if not c.get("required", True)}
    assert optional == {REASON_COLUMN, *EMOTIONS}  # empty for no_speech and for an emotion
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri))
    request = json.loads((local / "serving_input_example.json").read_text())
    assert list(request) == ["dataframe_split"]
    assert request["dataframe_split"]["columns"] == [AUDIO_COLUMN]
    assert (local / "artifacts" / "classifier" / "classifier.json").is_file()
    assert (
        local / "code" / "ser" / "serve" / "mlflow_model.py"
    ).is_file()  # the code travels with it
    assert "tensorflow-cpu==" in (local / "requirements.txt").read_text()


def test_each_training_registers_a_new_version(logged):
    versions = {info.registered_model_version for info in logged.values()}
    assert versions == {1, 2}


def test_ser_predict_takes_a_registered_model(logged, trained_models, clip_files, capsys):
    version = logged["logreg"].registered_model_version
    assert main(["predict", *map(str, clip_files), "--model", f"models:/{NAME}/{version}"]) == 0
    from_registry = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert main(["predict", *map(str, clip_files), "--model", str(trained_models["logreg"])]) == 0
    assert list(csv.reader(io.StringIO(capsys.readouterr().out))) == from_registry
    assert len(from_registry) == 1 + len(clip_files)


def test_an_unknown_registered_model_is_a_clear_error(store, clip_files, caplog):
    assert main(["predict", str(clip_files[0]), "--model", "models:/no-such-model@champion"]) == 2
    assert "models:/no-such-model@champion" in caplog.text


def test_a_local_folder_is_used_as_it_is(tmp_path):
    assert classifier_dir(str(tmp_path)) == tmp_path


def test_the_request_example_is_a_usable_clip(trained_models):
    classifier = Classifier.load(trained_models["spectrogram_cnn"])
    answer = predict_table(classifier, pd.DataFrame({AUDIO_COLUMN: [example_clip(SAMPLE_RATE)]}))
    assert answer[LABEL_COLUMN].iloc[0] in EMOTIONS
    assert answer[list(EMOTIONS)].sum(axis=1).iloc[0] == pytest.approx(1.0, abs=1e-5)


GOOD = audio_bytes(tone(0.8, 200))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pd.DataFrame({"wave": [GOOD]}), r"no 'audio' column \(got \['wave'\]\)"),
        (pd.DataFrame({AUDIO_COLUMN: []}), "no clips: the request has no rows"),
        (
            pd.DataFrame({AUDIO_COLUMN: [GOOD, 3]}),
            "row 1: audio must be the bytes of an audio file",
        ),
        (pd.DataFrame({AUDIO_COLUMN: [GOOD, b""]}), "row 1: empty: no bytes"),
        (pd.DataFrame({AUDIO_COLUMN: [b"hello, not audio"]}), r"row 0: not readable audio"),
        (
            pd.DataFrame({AUDIO_COLUMN: [base64.b64encode(GOOD)]}),
            r"row 0: not readable audio \(Format not recognised\.\) \(the audio is base64 text",
        ),
        (pd.DataFrame({AUDIO_COLUMN: [GOOD, GOOD[: len(GOOD) // 2]]}), r"row 1: truncated: "),
        (pd.DataFrame({AUDIO_COLUMN: [audio_bytes(tone(0.01, 200))]}), "row 0: too short"),
    ],
    ids=[
        "no-audio-column",
        "no-rows",
        "not-bytes",
        "empty",
        "not-audio",
        "base64",
        "truncated",
        "short",
    ],
)
def test_an_unusable_request_is_refused_naming_the_row_and_why(trained_models, table, message):
    classifier = Classifier.load(trained_models["spectrogram_cnn"])
    with pytest.raises(RequestError, match=message) as refused:
        predict_table(classifier, table)
    assert refused.value.get_http_status_code() == 400


def test_a_clip_longer_than_the_models_limit_is_refused_from_its_header(trained_models):
    classifier = Classifier.load(trained_models["spectrogram_cnn"])
    classifier = dataclasses.replace(
        classifier, audio=classifier.audio.model_copy(update={"max_duration": 2.0})
    )
    long = audio_bytes(tone(2.5, 200))
    with pytest.raises(
        RequestError, match=r"row 0: too long: 2\.5 s \(audio\.max_duration is 2\.0 s\)"
    ):
        predict_table(classifier, pd.DataFrame({AUDIO_COLUMN: [long]}))


def test_plain_text_gets_no_base64_hint(trained_models):
    """English text matched the old base64 pattern and was told to send base64 differently."""
    classifier = Classifier.load(trained_models["spectrogram_cnn"])
    text = b"this is a plain text file written in English and nothing else"
    with pytest.raises(RequestError) as refused:
        predict_table(classifier, pd.DataFrame({AUDIO_COLUMN: [text]}))
    assert str(refused.value.message) == "row 0: not readable audio (Format not recognised.)"


def test_no_speech_rows_are_answered_with_the_reason_and_no_probabilities(trained_models):
    classifier = Classifier.load(trained_models["logreg"])
    gated = dataclasses.replace(classifier, speech=SpeechParams())
    table = pd.DataFrame({AUDIO_COLUMN: [GOOD, audio_bytes(noise(1.0, 0.1))]})
    answer = predict_table(gated, table)
    assert answer[LABEL_COLUMN].tolist() == [NO_SPEECH, NO_SPEECH]
    assert answer[REASON_COLUMN].str.startswith("no speech: ").all()
    assert answer[SPEECH_RATIO_COLUMN].tolist() == [0.0, 0.0]
    assert answer[list(EMOTIONS)].isna().all().all()
    records = json.loads(json.dumps(answer.to_dict(orient="records")))  # as the server sends it
    assert records[0][EMOTIONS[0]] is None  # null, not NaN (which is not JSON)


def hostile_files(folder: Path) -> dict[str, Path]:
    """Files every request path must refuse, by what is wrong with them."""
    good = audio_bytes(tone(0.8, 200))
    flac = audio_bytes(tone(0.8, 200), audio_format="FLAC")
    contents = {
        "empty": b"",
        "text": b"this is a plain text file written in English and nothing else",
        "random": np.random.default_rng(0).bytes(4096),
        "half WAV": good[: len(good) // 2],
        "half FLAC": flac[: len(flac) // 2],
        "WAV header only": good[:44],
        "too long": audio_bytes(tone(61, sample_rate=8000), 8000),
        "silent": audio_bytes(np.zeros(16_000, np.float32)),
        "too short": audio_bytes(tone(0.01, 200)),
    }
    files = {}
    for name, content in contents.items():
        files[name] = folder / f"{name.replace(' ', '_')}.wav"
        files[name].write_bytes(content)
    files["NaN"] = folder / "nan.wav"
    soundfile.write(files["NaN"], np.full(8000, np.nan, np.float32), SAMPLE_RATE, subtype="FLOAT")
    return files


def test_every_rejection_reads_the_same_in_ser_predict_and_the_server(trained_models, tmp_path):
    classifier = Classifier.load(trained_models["logreg"])
    files = hostile_files(tmp_path)
    for name, path in files.items():
        [from_file] = predict_files([path], classifier)
        assert from_file.refused, name
        with pytest.raises(RequestError) as refused:
            predict_table(classifier, pd.DataFrame({AUDIO_COLUMN: [path.read_bytes()]}))
        assert refused.value.message == f"row 0: {from_file.reason}", name
