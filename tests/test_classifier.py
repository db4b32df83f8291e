"""The saved classifier: estimator, preprocessing, label encoder and feature config travel together."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
from conftest import TINY_MODEL, make_params
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ser import EMOTIONS
from ser.classifier import (
    ESTIMATOR_FILE,
    NETWORK_FILE,
    Classifier,
    ModelError,
    fit_preprocessing,
    label_encoder,
)
from ser.config import AudioParams, FeatureParams, ModelParams
from ser.features import feature_names
from ser.model import build_cnn


def test_label_encoder_has_the_seven_labels_in_order():
    encoder = label_encoder()
    assert [str(c) for c in encoder.categories_[0]] == list(EMOTIONS)
    one_hot = encoder.transform(np.array([["sad"], ["neutral"]]))
    np.testing.assert_array_equal(one_hot.argmax(axis=1), [EMOTIONS.index("sad"), 0])


def test_saved_model_predicts_like_the_original(trained_model_dir):
    classifier = Classifier.load(trained_model_dir)
    values = np.random.default_rng(0).normal(size=(300, len(classifier.feature_names)))
    probabilities = classifier.predict_proba(values)
    copy = trained_model_dir.parent / "copy"
    written = classifier.save(copy)
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in written)
    assert {p.name for p in written} == {
        NETWORK_FILE,
        "preprocessing.joblib",
        "feature_config.json",
    }
    reloaded = Classifier.load(copy)
    np.testing.assert_array_equal(reloaded.predict_proba(values), probabilities)
    assert reloaded.predict(values) == classifier.predict(values)
    assert reloaded.feature_names == classifier.feature_names
    np.testing.assert_array_equal(
        reloaded.preprocessing["scale"].mean_, classifier.preprocessing["scale"].mean_
    )


def test_round_trip_of_a_fresh_network(tmp_path):
    params = make_params({"audio": {"target_dbfs": -23.0}, "features": {"stats": ["mean"]}})
    names = feature_names(params.features)
    rng = np.random.default_rng(1)
    hp = ModelParams(**TINY_MODEL)
    labels = np.arange(50) % len(EMOTIONS)
    preprocessing = fit_preprocessing(rng.normal(3, 2, size=(50, len(names))), labels, hp)
    network = build_cnn(len(names), len(EMOTIONS), hp)
    original = Classifier(
        network, preprocessing, label_encoder(), names, params.audio, params.features
    )
    original.save(tmp_path)
    loaded = Classifier.load(tmp_path)
    values = rng.normal(3, 2, size=(20, len(names)))
    np.testing.assert_allclose(loaded.predict_proba(values), original.predict_proba(values))
    assert loaded.audio == params.audio
    assert loaded.features.stats == ["mean"]
    assert loaded.classes == list(EMOTIONS)


def test_feature_config_leaves_out_machine_specific_knobs(trained_model_dir):
    config = json.loads((trained_model_dir / "feature_config.json").read_text())
    assert set(config) == {"audio", "features"}
    assert "workers" not in config["features"]
    assert "cache_dir" not in config["features"]
    assert AudioParams(**config["audio"]) == make_params().audio
    assert FeatureParams(**config["features"]).n_mels == make_params().features.n_mels


def test_probabilities_are_a_distribution_over_the_labels(trained_model_dir):
    classifier = Classifier.load(trained_model_dir)
    values = np.random.default_rng(2).normal(size=(10, len(classifier.feature_names)))
    probabilities = classifier.predict_proba(values)
    assert probabilities.shape == (10, len(EMOTIONS))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert set(classifier.predict(values)) <= set(EMOTIONS)


def test_batched_and_direct_prediction_agree(trained_model_dir):
    classifier = Classifier.load(trained_model_dir)
    values = np.random.default_rng(3).normal(size=(40, len(classifier.feature_names)))
    direct = classifier.predict_proba(values, batch_size=256)
    batched = classifier.predict_proba(values, batch_size=16)
    np.testing.assert_allclose(direct, batched, rtol=1e-5, atol=1e-6)


def test_empty_input_gives_an_empty_result(trained_model_dir):
    classifier = Classifier.load(trained_model_dir)
    empty = classifier.predict_proba(np.empty((0, len(classifier.feature_names))))
    assert empty.shape == (0, len(EMOTIONS))
    assert classifier.predict(np.empty((0, len(classifier.feature_names)))) == []


def test_prepare_standardises_with_training_statistics(trained_model_dir):
    classifier = Classifier.load(trained_model_dir)
    prepared = classifier.prepare(classifier.preprocessing["scale"].mean_[np.newaxis, :])
    assert prepared.shape == (1, len(classifier.feature_names), 1)
    np.testing.assert_allclose(prepared, 0.0, atol=1e-5)


def test_loading_without_a_model_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no trained model \(run the train stage\)"):
        Classifier.load(tmp_path)


def fitted_logreg(
    names: list[str], labels: list[int], seed: int = 4, hp: ModelParams | None = None
) -> Classifier:
    """A logistic regression on random values preprocessed as ``hp`` says, as a Classifier."""
    params = make_params()
    values = np.random.default_rng(seed).normal(size=(70, len(names)))
    preprocessing = fit_preprocessing(values, np.asarray(labels), hp or ModelParams())
    estimator = LogisticRegression(max_iter=500).fit(preprocessing.transform(values), labels)
    return Classifier(
        estimator, preprocessing, label_encoder(), names, params.audio, params.features
    )


def test_a_scikit_learn_estimator_round_trips_through_model_joblib(tmp_path):
    names = feature_names(make_params().features)
    original = fitted_logreg(names, [i % len(EMOTIONS) for i in range(70)])
    written = original.save(tmp_path)
    assert {p.name for p in written} == {
        ESTIMATOR_FILE,
        "preprocessing.joblib",
        "feature_config.json",
    }
    loaded = Classifier.load(tmp_path)
    assert not loaded.is_network and loaded.classes == list(EMOTIONS)
    values = np.random.default_rng(5).normal(size=(30, len(names)))
    probabilities = loaded.predict_proba(values)
    np.testing.assert_array_equal(probabilities, original.predict_proba(values))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert loaded.predict(values) == original.predict(values)
    assert loaded.prepare(values).shape == values.shape  # no channel axis outside the CNN


def test_classes_missing_from_training_get_zero_probability():
    names = feature_names(make_params().features)
    seen = [EMOTIONS.index("angry"), EMOTIONS.index("sad"), EMOTIONS.index("happy")]
    classifier = fitted_logreg(names, [seen[i % 3] for i in range(70)])
    probabilities = classifier.predict_proba(np.random.default_rng(6).normal(size=(9, len(names))))
    assert probabilities.shape == (9, len(EMOTIONS))
    unseen = [i for i in range(len(EMOTIONS)) if i not in seen]
    np.testing.assert_array_equal(probabilities[:, unseen], 0.0)
    np.testing.assert_allclose(probabilities[:, seen].sum(axis=1), 1.0, rtol=1e-5)


def test_saving_another_kind_replaces_the_previous_model(tmp_path, trained_model_dir):
    network = Classifier.load(trained_model_dir)
    network.save(tmp_path)
    fitted_logreg(network.feature_names, [i % len(EMOTIONS) for i in range(70)]).save(tmp_path)
    assert not (tmp_path / NETWORK_FILE).exists()
    assert not Classifier.load(tmp_path).is_network
    network.save(tmp_path)
    assert not (tmp_path / ESTIMATOR_FILE).exists()
    assert Classifier.load(tmp_path).is_network


def test_two_saved_models_are_refused(tmp_path, trained_model_dir):
    Classifier.load(trained_model_dir).save(tmp_path)
    (tmp_path / ESTIMATOR_FILE).write_bytes(b"a stale model")
    with pytest.raises(ModelError, match=r"both model\.keras and model\.joblib"):
        Classifier.load(tmp_path)


def test_a_model_saved_before_the_preprocessing_pipeline_is_refused(tmp_path, trained_model_dir):
    Classifier.load(trained_model_dir).save(tmp_path)
    old = {"scaler": StandardScaler(), "encoder": label_encoder(), "feature_names": ["x"]}
    joblib.dump(old, tmp_path / "preprocessing.joblib")
    with pytest.raises(ModelError, match=r"preprocessing\.joblib: saved by an older version"):
        Classifier.load(tmp_path)


def informative_values(rows: int = 140, columns: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Random values where only columns 3 and 17 carry the label (and column 5 an outlier)."""
    rng = np.random.default_rng(8)
    labels = np.arange(rows) % len(EMOTIONS)
    values = rng.normal(size=(rows, columns))
    values[:, 3] += 2.0 * labels
    values[:, 17] -= 1.5 * labels
    values[0, 5] = 1e3
    return values, labels


def test_preprocessing_standardises_only_by_default():
    values, labels = informative_values()
    preprocessing = fit_preprocessing(values, labels, ModelParams())
    assert list(preprocessing.named_steps) == ["scale"]
    prepared = preprocessing.transform(values)
    np.testing.assert_allclose(prepared.mean(axis=0), 0.0, atol=1e-9)
    assert prepared[0, 5] > 10  # the outlier passes through unclipped


def test_preprocessing_clips_and_keeps_the_most_informative_features():
    values, labels = informative_values()
    preprocessing = fit_preprocessing(values, labels, ModelParams(input_clip=3.0, select_k=2))
    assert list(preprocessing.named_steps) == ["scale", "clip", "select"]
    assert list(preprocessing.get_feature_names_out()) == ["x3", "x17"]
    clipped = preprocessing[:-1].transform(values)
    assert clipped.max() == 3.0 and clipped.min() >= -3.0
    assert preprocessing.transform(values).shape == (len(values), 2)


def test_select_k_wider_than_the_features_keeps_them_all():
    values, labels = informative_values()
    preprocessing = fit_preprocessing(values, labels, ModelParams(select_k=50))
    assert "select" not in preprocessing.named_steps
    assert preprocessing.transform(values).shape == values.shape


def test_a_network_on_selected_features_round_trips(tmp_path):
    params = make_params()
    names = feature_names(params.features)
    values, labels = informative_values(columns=len(names))
    hp = ModelParams(**TINY_MODEL, select_k=12, input_clip=4.0, input_noise=0.3, l2=1e-3)
    preprocessing = fit_preprocessing(values, labels, hp)
    network = build_cnn(12, len(EMOTIONS), hp)
    original = Classifier(
        network, preprocessing, label_encoder(), names, params.audio, params.features
    )
    assert original.prepare(values).shape == (len(values), 12, 1)
    original.save(tmp_path)
    loaded = Classifier.load(tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(values), original.predict_proba(values))
    assert list(loaded.preprocessing.named_steps) == ["scale", "clip", "select"]


def test_a_linear_model_on_selected_features_round_trips(tmp_path):
    names = feature_names(make_params().features)
    hp = ModelParams(kind="logreg", select_k=5, input_clip=2.5)
    original = fitted_logreg(names, [i % len(EMOTIONS) for i in range(70)], hp=hp)
    assert original.prepare(np.zeros((3, len(names)))).shape == (3, 5)
    original.save(tmp_path)
    loaded = Classifier.load(tmp_path)
    values = np.random.default_rng(9).normal(size=(11, len(names)))
    np.testing.assert_array_equal(loaded.predict_proba(values), original.predict_proba(values))
