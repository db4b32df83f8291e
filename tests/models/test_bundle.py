"""The saved classifier: a model of one kind and its feature configuration travel together."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TRAINED_KINDS, feature_table, make_params

from ser import EMOTIONS
from ser.config import AudioParams, FeatureParams, FrameParams
from ser.models.base import Model, ModelError
from ser.models.bundle import CLASSIFIER_FILE, Classifier
from ser.table.store import select

KIND_FILES = {
    "spectrogram_cnn": {"spectrogram_cnn.keras"},
    "seed_cnn": {"model.keras", "preprocessing.joblib"},
    "logreg": {"model.joblib", "preprocessing.joblib"},
    "linear_svm": {"model.joblib", "preprocessing.joblib"},
    "fusion": {
        "fusion.json",
        "spectrogram_cnn/spectrogram_cnn.keras",
        "logreg/model.joblib",
        "logreg/preprocessing.joblib",
    },
}
"""What each kind writes besides classifier.json, relative to the models folder."""


def files_under(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Test rows of a table like the one the tiny models were fitted on (vectors and frames)."""
    return select(feature_table(make_params(), seed=3), "test")


def test_every_kind_has_its_expected_files():
    assert set(KIND_FILES) == set(TRAINED_KINDS)


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_save_writes_classifier_json_and_the_kinds_files(trained_models, tmp_path, rows, kind):
    classifier = Classifier.load(trained_models[kind])
    assert classifier.kind == kind
    target = tmp_path / "models"
    written = classifier.save(target)
    assert {str(p.relative_to(target)) for p in written} == {CLASSIFIER_FILE, *KIND_FILES[kind]}
    assert files_under(target) == {CLASSIFIER_FILE, *KIND_FILES[kind]}
    assert [p.name for p in tmp_path.iterdir()] == ["models"]  # no staging folder left behind
    reloaded = Classifier.load(target)
    assert reloaded.kind == kind
    np.testing.assert_array_equal(reloaded.predict_proba(rows), classifier.predict_proba(rows))


def test_save_replaces_a_folder_holding_another_kinds_model(trained_models, tmp_path, rows):
    target = tmp_path / "models"
    for kind in ("seed_cnn", "logreg", "fusion", "spectrogram_cnn", "linear_svm"):
        Classifier.load(trained_models[kind]).save(target)
        assert files_under(target) == {CLASSIFIER_FILE, *KIND_FILES[kind]}, kind
        assert Classifier.load(target).kind == kind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


class BrokenModel(Model):
    """A model whose save writes one file, then fails."""

    kind = "logreg"

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        return np.full((len(rows), len(EMOTIONS)), 1 / len(EMOTIONS), np.float32)

    def save(self, directory: Path) -> list[Path]:
        (directory / "model.joblib").write_bytes(b"half a model")
        raise OSError("disk full")


def test_a_failed_save_leaves_the_previous_model_in_place(trained_models, tmp_path, rows):
    target = tmp_path / "models"
    shutil.copytree(trained_models["spectrogram_cnn"], target)
    before = files_under(target)
    expected = Classifier.load(target).predict_proba(rows)
    params = make_params()
    broken = Classifier("logreg", BrokenModel(), params.audio, params.features, params.frames)
    with pytest.raises(OSError, match="disk full"):
        broken.save(target)
    assert files_under(target) == before
    np.testing.assert_array_equal(Classifier.load(target).predict_proba(rows), expected)


@pytest.mark.parametrize(
    "old_files",
    [
        ("model.keras", "preprocessing.joblib", "feature_config.json"),  # the old CNN
        ("model.joblib", "preprocessing.joblib", "feature_config.json"),  # an old baseline
        ("model.keras", "preprocessing.joblib"),
    ],
)
def test_an_old_format_folder_is_refused_naming_the_folder(trained_models, tmp_path, old_files):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in old_files:
        source = trained_models["seed_cnn"] / name
        if source.is_file():
            shutil.copy(source, folder / name)
        else:
            (folder / name).write_text("{}")
    message = rf"{re.escape(str(folder))}: saved by an older version of ser .*train stage again"
    with pytest.raises(ModelError, match=message):
        Classifier.load(folder)


@pytest.mark.parametrize("exists", [True, False])
def test_a_folder_without_a_model_says_what_to_run(tmp_path, exists):
    folder = tmp_path / "models"
    if exists:
        folder.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no trained model \(run the train stage\)"):
        Classifier.load(folder)


def test_an_unknown_kind_is_refused_naming_the_file(trained_models, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(trained_models["logreg"], folder)
    config = json.loads((folder / CLASSIFIER_FILE).read_text())
    (folder / CLASSIFIER_FILE).write_text(json.dumps({**config, "kind": "cnn"}))
    with pytest.raises(ModelError, match=rf"{re.escape(str(folder / CLASSIFIER_FILE))}: .*'cnn'"):
        Classifier.load(folder)


def test_classifier_json_holds_the_kind_and_the_feature_configuration(trained_models):
    params = make_params()
    config = json.loads((trained_models["spectrogram_cnn"] / CLASSIFIER_FILE).read_text())
    assert set(config) == {
        "kind",
        "classes",
        "audio",
        "features",
        "frames",
        "speech",
        "calibration",
    }
    assert config["kind"] == "spectrogram_cnn"
    assert config["speech"] == params.speech.model_dump(mode="json")
    assert config["calibration"] == {"temperature": 1.0, "uncertain_below": None}
    assert config["classes"] == list(EMOTIONS)
    assert AudioParams(**config["audio"]) == params.audio
    assert FrameParams(**config["frames"]) == params.frames
    assert FeatureParams(**config["features"]) == params.features.model_copy(
        update={"workers": FeatureParams().workers, "cache_dir": FeatureParams().cache_dir}
    )


def test_classifier_json_leaves_out_machine_specific_feature_knobs(trained_models, tmp_path):
    model = Classifier.load(trained_models["logreg"]).model
    saved = []
    for index, (workers, cache) in enumerate([(1, "data/cache/features"), (7, "/scratch/c")]):
        params = make_params({"features": {"workers": workers, "cache_dir": cache}})
        folder = tmp_path / f"models{index}"
        Classifier("logreg", model, params.audio, params.features, params.frames).save(folder)
        saved.append((folder / CLASSIFIER_FILE).read_bytes())
    assert saved[0] == saved[1]
    features = json.loads(saved[0])["features"]
    assert "workers" not in features and "cache_dir" not in features


def test_loading_restores_the_audio_feature_and_frame_settings(trained_models, tmp_path):
    model = Classifier.load(trained_models["seed_cnn"]).model
    params = make_params(
        {
            "audio": {"target_dbfs": -23.0, "trim_top_db": None},
            "features": {"stats": ["mean"], "speaker_norm": "per_speaker"},
            "frames": {"hop_length": 160, "fmax": None},
        }
    )
    Classifier("seed_cnn", model, params.audio, params.features, params.frames).save(tmp_path)
    loaded = Classifier.load(tmp_path)
    assert loaded.audio == params.audio
    assert (loaded.features.stats, loaded.features.speaker_norm) == (["mean"], "per_speaker")
    assert loaded.frames == params.frames


def test_a_model_saved_before_features_sample_rate_reads_the_full_rate(trained_models, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(trained_models["logreg"], folder)
    config = json.loads((folder / CLASSIFIER_FILE).read_text())
    del config["features"]["sample_rate"]
    (folder / CLASSIFIER_FILE).write_text(json.dumps(config))
    assert FeatureParams().sample_rate == 8000
    assert Classifier.load(folder).features.sample_rate is None


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_probabilities_are_a_distribution_over_the_seven_labels(trained_models, rows, kind):
    classifier = Classifier.load(trained_models[kind])
    assert classifier.classes == list(EMOTIONS)
    probabilities = classifier.predict_proba(rows)
    assert probabilities.shape == (len(rows), len(EMOTIONS))
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    predicted = classifier.predict(rows)
    assert predicted == [EMOTIONS[i] for i in probabilities.argmax(axis=1)]


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_empty_input_gives_an_empty_result(trained_models, rows, kind):
    classifier = Classifier.load(trained_models[kind])
    empty = rows.iloc[:0]
    assert classifier.predict_proba(empty).shape == (0, len(EMOTIONS))
    assert classifier.predict(empty) == []
