"""``ser predict``: one line per file with every model kind, folders walked, unusable
files reported."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os

import numpy as np
import pytest
import soundfile
from conftest import SAMPLE_RATE, TRAINED_KINDS, noise, synth_clip, tone, write_audio

from ser import EMOTIONS
from ser.cli import main
from ser.config import SpeechParams
from ser.models.base import CLIP_INPUT, FRAMES_INPUT
from ser.models.bundle import Classifier
from ser.models.calibration import Calibration
from ser.serve.predict import (
    NO_SPEECH,
    UNCERTAIN,
    audio_files,
    feature_rows,
    featurise,
    predict_files,
    write_predictions,
)
from ser.signal.audio import load_clip
from ser.signal.conditions import quieter
from ser.signal.features import feature_names
from ser.table.store import FRAMES_COLUMN


@pytest.fixture
def clips(tmp_path):
    """Three usable clips (one in a sub-folder, one stereo at 44.1 kHz) and a broken one."""
    folder = tmp_path / "clips"
    good = [
        write_audio(folder / "a.wav", tone(0.8, 200)),
        write_audio(folder / "b.flac", noise(0.8, 0.1)),
        write_audio(
            folder / "sub" / "c.wav", np.stack([tone(0.8, 300, sample_rate=44_100)] * 2, 1), 44_100
        ),
    ]
    broken = folder / "broken.wav"
    broken.write_text("not audio")
    (folder / "notes.txt").write_text("not audio and not an audio suffix")
    return folder, good, broken


def signal_features(path, classifier):
    """featurise() of a file as predict conditions it."""
    return featurise(load_clip(path, classifier.audio), classifier)


def test_folders_are_walked_for_audio_files(clips, tmp_path):
    folder, good, broken = clips
    assert list(audio_files([folder])) == sorted([*good, broken])
    extra = tmp_path / "extra.txt"
    assert list(audio_files([extra, folder / "a.wav"])) == [extra, folder / "a.wav"]


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_csv_has_a_header_and_one_line_per_file(clips, trained_models, kind):
    folder, good, broken = clips
    out = io.StringIO()
    failures = write_predictions([folder], trained_models[kind], as_json=False, out=out)
    assert failures == 1
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["path", "label", *EMOTIONS, "speech_ratio", "reason"]
    assert [row[0] for row in rows[1:]] == [str(p) for p in sorted(good)]
    assert str(broken) not in out.getvalue()
    classifier = Classifier.load(trained_models[kind])
    expected = {str(a.key): a.probabilities for a in predict_files(sorted(good), classifier)}
    for row in rows[1:]:
        probabilities = [float(p) for p in row[2:-2]]
        assert 0 <= float(row[-2]) <= 1 and row[-1] == ""
        assert row[1] == EMOTIONS[int(np.argmax(probabilities))]
        assert sum(probabilities) == pytest.approx(1, abs=1e-3)
        np.testing.assert_allclose(probabilities, expected[row[0]], atol=5e-5)


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_json_lines(clips, trained_models, kind):
    _, good, _ = clips
    out = io.StringIO()
    failures = write_predictions([*good], trained_models[kind], as_json=True, out=out)
    assert failures == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in good]
    classifier = Classifier.load(trained_models[kind])
    expected = [answer.probabilities for answer in predict_files(good, classifier)]
    for record, probabilities in zip(records, expected, strict=True):
        assert set(record) == {"path", "label", "probabilities", "speech_ratio", "reason"}
        assert record["reason"] is None and 0 <= record["speech_ratio"] <= 1
        assert list(record["probabilities"]) == list(EMOTIONS)
        assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)
        np.testing.assert_allclose(list(record["probabilities"].values()), probabilities, rtol=1e-6)


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_predictions_match_the_classifier_on_the_same_features(clips, trained_models, kind):
    _, good, _ = clips
    classifier = Classifier.load(trained_models[kind])
    results = list(predict_files(good, classifier, batch_size=2))  # batches of 2 and 1
    assert [answer.key for answer in results] == good
    vectors, frames = zip(*(signal_features(p, classifier) for p in good), strict=True)
    expected = classifier.predict_proba(feature_rows(list(vectors), list(frames), classifier))
    assert expected.shape == (len(good), len(EMOTIONS))
    np.testing.assert_allclose(
        np.vstack([a.probabilities for a in results]), expected, rtol=1e-5, atol=1e-6
    )
    assert [answer.label for answer in results] == classifier.predict(
        feature_rows(list(vectors), list(frames), classifier)
    )


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_featurise_computes_only_what_the_model_reads(clips, trained_models, kind):
    _, good, _ = clips
    classifier = Classifier.load(trained_models[kind])
    vector, frames = signal_features(good[0], classifier)
    if CLIP_INPUT in classifier.inputs:
        assert vector.shape == (len(feature_names(classifier.features)),)
    else:
        assert vector is None
    if FRAMES_INPUT in classifier.inputs:
        assert frames.dtype == np.float32
        assert frames.shape[1] == classifier.frames.n_mels
        assert len(frames) <= classifier.frames.max_frames
    else:
        assert frames is None


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_feature_rows_are_shaped_like_the_feature_table(clips, trained_models, kind):
    _, good, _ = clips
    classifier = Classifier.load(trained_models[kind])
    vectors, frames = zip(*(signal_features(p, classifier) for p in good), strict=True)
    rows = feature_rows(list(vectors), list(frames), classifier)
    names = feature_names(classifier.features) if CLIP_INPUT in classifier.inputs else []
    expected_columns = [*names, *([FRAMES_COLUMN] if FRAMES_INPUT in classifier.inputs else [])]
    assert list(rows.columns) == expected_columns
    assert len(rows) == len(good)
    if names:
        np.testing.assert_array_equal(rows[names].to_numpy(), np.vstack(vectors))
    if FRAMES_INPUT in classifier.inputs:
        for row_frames, clip_frames in zip(rows[FRAMES_COLUMN], frames, strict=True):
            np.testing.assert_array_equal(row_frames, clip_frames)


def per_speaker(classifier: Classifier) -> Classifier:
    """The classifier as if trained with ``features.speaker_norm: per_speaker``."""
    features = classifier.features.model_copy(update={"speaker_norm": "per_speaker"})
    return dataclasses.replace(classifier, features=features)


def test_per_speaker_rows_are_standardised_together(clips, trained_models):
    _, good, _ = clips
    classifier = per_speaker(Classifier.load(trained_models["logreg"]))
    vectors, frames = zip(*(signal_features(p, classifier) for p in good), strict=True)
    rows = feature_rows(list(vectors), list(frames), classifier)
    values = rows[feature_names(classifier.features)].to_numpy()
    varying = np.vstack(vectors).std(axis=0) > 0
    np.testing.assert_allclose(values.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(values.std(axis=0)[varying], 1, rtol=1e-4)
    results = list(predict_files(good, classifier, batch_size=1))  # one batch all the same
    expected = classifier.predict_proba(rows)
    np.testing.assert_allclose(np.vstack([a.probabilities for a in results]), expected, rtol=1e-5)


def test_per_speaker_needs_two_clips(clips, trained_models):
    _, good, _ = clips
    classifier = per_speaker(Classifier.load(trained_models["logreg"]))
    [answer] = predict_files(good[:1], classifier)
    assert (answer.key, answer.label) == (good[0], None)
    assert answer.reason == "per-speaker normalisation needs 2 or more clips of the speaker"


def test_unusable_files_are_yielded_with_the_reason(clips, trained_model_dir, tmp_path):
    _, _, broken = clips
    silent = write_audio(tmp_path / "silent.wav", np.zeros(16_000, np.float32))
    missing = tmp_path / "missing.wav"
    classifier = Classifier.load(trained_model_dir)
    results = {
        answer.key: (answer.label, answer.reason)
        for answer in predict_files([broken, silent, missing], classifier)
    }
    assert results[broken][0] is None
    assert "not readable audio" in results[broken][1]
    assert results[silent] == (None, "silent: peak below -80 dBFS")
    assert results[missing] == (None, "no such file or directory")


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_command_prints_csv_and_exits_1_on_a_bad_file(clips, trained_models, kind, capsys, caplog):
    folder, good, broken = clips
    with caplog.at_level(logging.ERROR, logger="ser"):
        code = main(["predict", str(folder), "--model-dir", str(trained_models[kind])])
    assert code == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ",".join(["path", "label", *EMOTIONS, "speech_ratio", "reason"])
    assert [line.split(",")[0] for line in lines[1:]] == [str(p) for p in sorted(good)]
    assert all(line.split(",")[1] in EMOTIONS for line in lines[1:])
    assert f"{broken}: not readable audio" in caplog.text


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_command_prints_json_and_exits_0_when_every_file_is_usable(
    clips, trained_models, kind, capsys
):
    _, good, _ = clips
    model_dir = str(trained_models[kind])
    assert main(["predict", *map(str, good), "--json", "--model-dir", model_dir]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["path"] for record in records] == [str(p) for p in good]
    assert all(record["label"] in EMOTIONS for record in records)


def test_a_frames_model_needs_no_second_clip_under_per_speaker_features(clips, trained_models):
    """features.speaker_norm standardises clip vectors; a model of frames alone never reads them."""
    _, good, _ = clips
    classifier = per_speaker(Classifier.load(trained_models["spectrogram_cnn"]))
    [answer] = predict_files(good[:1], classifier)
    assert (answer.key, answer.label) == (good[0], EMOTIONS[int(np.argmax(answer.probabilities))])


def test_a_folder_without_audio_fails_before_the_model_loads(tmp_path, capsys, caplog):
    empty = tmp_path / "recordings"
    empty.mkdir()
    (empty / "notes.txt").write_text("not audio")
    with caplog.at_level(logging.ERROR, logger="ser"):
        code = main(["predict", str(empty), "--model-dir", str(tmp_path / "no-model")])
    assert code == 2
    assert f"{empty}: no audio files (.aif, .aiff, .flac, .mp3, .ogg, .wav)" in caplog.text
    assert capsys.readouterr().out == ""


def test_a_missing_path_is_named(clips, trained_model_dir, tmp_path, capsys, caplog):
    _, good, _ = clips
    missing = tmp_path / "typo.wav"
    with caplog.at_level(logging.ERROR, logger="ser"):
        code = main(["predict", str(missing), str(good[0]), "--model-dir", str(trained_model_dir)])
    assert code == 1
    assert f"{missing}: no such file or directory" in caplog.text
    assert "System error" not in caplog.text
    assert len(capsys.readouterr().out.splitlines()) == 2  # header and the good file


@pytest.mark.timeout(60)
def test_a_fifo_in_a_folder_is_skipped_not_read(clips, trained_model_dir, caplog):
    folder, good, _ = clips
    fifo = folder / "x.wav"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    out = io.StringIO()
    with caplog.at_level(logging.ERROR, logger="ser"):
        failures = write_predictions([folder], trained_model_dir, as_json=True, out=out)
    assert failures == 2  # the FIFO and the broken file
    assert f"{fifo}: not a regular file" in caplog.text
    assert [json.loads(line)["path"] for line in out.getvalue().splitlines()] == [
        str(p) for p in sorted(good)
    ]


@pytest.mark.parametrize("trim_top_db", [30.0, None])
def test_hostile_content_is_skipped_with_the_reason(trained_model_dir, tmp_path, trim_top_db):
    classifier = Classifier.load(trained_model_dir)
    audio = classifier.audio.model_copy(update={"trim_top_db": trim_top_db, "max_duration": 2.0})
    classifier = dataclasses.replace(classifier, audio=audio)
    nan, inf = tone(0.8), tone(0.8)
    nan[100], inf[::1000] = np.nan, np.inf
    for name, signal in {"nan.wav": nan, "inf.wav": inf}.items():
        soundfile.write(tmp_path / name, signal, SAMPLE_RATE, subtype="FLOAT")
    long = write_audio(tmp_path / "long.flac", noise(2.5))
    surround = write_audio(tmp_path / "surround.wav", np.stack([tone(0.8, 300)] * 6, axis=1))
    results = {
        answer.key.name: (answer.label, answer.reason)
        for answer in predict_files(
            [tmp_path / "nan.wav", tmp_path / "inf.wav", long, surround], classifier
        )
    }
    assert results["nan.wav"] == (None, "non-finite samples (NaN or Inf)")
    assert results["inf.wav"] == (None, "non-finite samples (NaN or Inf)")
    assert results["long.flac"] == (None, "too long: 2.5 s (audio.max_duration is 2.0 s)")
    assert results["surround.wav"][0] in EMOTIONS  # six channels are downmixed, as in training


def test_a_folder_named_like_an_audio_file_is_walked_once(clips, trained_model_dir, caplog):
    """An empty ``x.wav/`` aborted the run (exit 2); a full one had its files predicted twice."""
    folder, good, broken = clips
    (folder / "empty.wav").mkdir()
    takes = folder / "takes.flac"
    inside = write_audio(takes / "d.wav", tone(0.8, 250))
    assert list(audio_files([folder])) == sorted([*good, broken, inside])
    out = io.StringIO()
    with caplog.at_level(logging.ERROR, logger="ser"):
        failures = write_predictions([folder], trained_model_dir, as_json=True, out=out)
    assert failures == 1  # the broken file only
    printed = [json.loads(line)["path"] for line in out.getvalue().splitlines()]
    assert printed == [str(p) for p in sorted([*good, inside])]


def gated(classifier: Classifier, **speech: float) -> Classifier:
    """The classifier with its speech gate on (the defaults), or as ``speech`` sets it."""
    return dataclasses.replace(classifier, speech=SpeechParams(**speech))


def test_the_speech_gate_answers_no_speech_without_running_the_model(clips, trained_models):
    _, good, _ = clips
    classifier = gated(Classifier.load(trained_models["logreg"]))
    answers = list(predict_files(good, classifier))
    assert [a.label for a in answers] == [NO_SPEECH] * len(good)  # tones and noise
    for answer in answers:
        assert answer.probabilities is None
        assert answer.reason.startswith("no speech: 0.00 s of speech detected")
        assert answer.stats.speech_ratio == 0
        assert answer.stats.sample_rate in (SAMPLE_RATE, 44_100)


def test_no_speech_is_printed_with_its_reason_and_is_no_failure(clips, trained_models, tmp_path):
    _, good, _ = clips
    directory = tmp_path / "gated"
    gated(Classifier.load(trained_models["logreg"])).save(directory)
    out = io.StringIO()
    assert write_predictions(good[:1], directory, as_json=False, out=out) == 0
    _, row = list(csv.reader(io.StringIO(out.getvalue())))
    assert row[:2] == [str(good[0]), NO_SPEECH]
    assert row[2:-2] == [""] * len(EMOTIONS)
    assert float(row[-2]) == 0 and row[-1].startswith("no speech:")
    out = io.StringIO()
    assert write_predictions(good[:1], directory, as_json=True, out=out) == 0
    record = json.loads(out.getvalue())
    assert record["label"] == NO_SPEECH and record["probabilities"] is None
    assert record["speech_ratio"] == 0 and record["reason"].startswith("no speech:")


def test_uncertain_below_the_saved_threshold(clips, trained_models):
    _, good, _ = clips
    classifier = Classifier.load(trained_models["logreg"])
    answers = list(predict_files(good, classifier))
    confidences = sorted(a.probabilities.max() for a in answers)
    threshold = (confidences[0] + confidences[-1]) / 2
    cautious = dataclasses.replace(classifier, calibration=Calibration(1.0, threshold))
    for plain, careful in zip(answers, predict_files(good, cautious), strict=True):
        np.testing.assert_allclose(careful.probabilities, plain.probabilities)
        if plain.probabilities.max() < threshold:
            assert careful.label == UNCERTAIN
            assert careful.reason.startswith(
                f"uncertain: top probability {plain.probabilities.max():.2f}"
            )
        else:
            assert (careful.label, careful.reason) == (plain.label, None)
    assert {a.label for a in predict_files(good, cautious)} & {UNCERTAIN}


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_a_clip_and_the_same_clip_30_db_quieter_get_the_same_answer(trained_models, tmp_path, kind):
    """Conditioning brings every recording to one level: a quiet microphone is no emotion.
    The same probabilities to 0.05, so the same label unless two emotions nearly tie."""
    classifier = Classifier.load(trained_models[kind])
    pairs = [
        (
            write_audio(tmp_path / f"{index}.wav", synth_clip(index, 2, 0)),
            write_audio(tmp_path / f"{index}-quiet.wav", quieter(synth_clip(index, 2, 0), 30)),
        )
        for index in range(len(EMOTIONS))
    ]
    answers = list(predict_files([path for pair in pairs for path in pair], classifier))
    for loud, quiet in zip(answers[::2], answers[1::2], strict=True):
        np.testing.assert_allclose(quiet.probabilities, loud.probabilities, atol=0.05)
        runner_up, top = np.sort(loud.probabilities)[-2:]
        if top - runner_up > 0.1:  # these tiny models never heard audio: some answers are ties
            assert quiet.label == loud.label, quiet.key
