"""The spectrogram CNN: masks over padded clips, training-only augmentation, seeded batches."""

from __future__ import annotations

import itertools
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import PROJECT_ROOT, feature_table, kind_params, make_params, project_env, run

from ser import EMOTIONS, ORIGINAL
from ser.config import SpectrogramCnnParams
from ser.models import spectrogram_cnn
from ser.models.base import Fitted
from ser.models.spectrogram_cnn import (
    BUCKET_BATCHES,
    MaskedMeanMaxPool,
    SpectrogramCnn,
    TimeMask,
    TrainingBatches,
    build_spectrogram_cnn,
    pad,
    spec_augment,
)
from ser.table.store import FRAMES_COLUMN, select

N_MELS = 6
NO_AUGMENTATION = {"freq_masks": 0, "time_masks": 0, "mixup_alpha": 0.0}


def clips(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    """Random log-mel frames of the given lengths (around -20, like log energies)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(-20, 4, (length, N_MELS)).astype(np.float32) for length in lengths]


def fresh_network(channels: tuple[int, ...] = (4, 8)) -> SpectrogramCnn:
    """An untrained spectrogram CNN over N_MELS bands (inference: batch norm is the identity)."""
    keras.utils.set_random_seed(0)
    hp = SpectrogramCnnParams(channels=list(channels), convs_per_block=1)
    mean, std = np.full(N_MELS, -20.0), np.full(N_MELS, 4.0)
    return SpectrogramCnn(build_spectrogram_cnn(N_MELS, len(EMOTIONS), hp, mean, std))


def batches(
    lengths: list[int],
    labels: list[int] | None = None,
    seed: int = 3,
    recordings: list[int] | None = None,
    **hp: object,
) -> TrainingBatches:
    """Seeded training batches of random clips of ``lengths`` (4 a batch, padded to multiples
    of 4); ``recordings`` says which rows are copies of one recording (default: none are)."""
    labels = labels if labels is not None else [i % len(EMOTIONS) for i in range(len(lengths))]
    targets = np.eye(len(EMOTIONS), dtype=np.float32)[labels]
    settings = SpectrogramCnnParams(**{"batch_size": 4, **hp})
    fill = np.linspace(-25, -15, N_MELS).astype(np.float32)
    sources = np.arange(len(lengths)) if recordings is None else np.asarray(recordings)
    return TrainingBatches(
        clips(lengths), targets, np.ones(len(lengths)), settings, fill, seed, 4, sources
    )


def test_each_epoch_takes_one_row_of_each_recording():
    recordings = [0, 1, 2, 3, 4, 5] * 3  # every recording: the original and two copies
    training = batches([10] * 18, recordings=recordings)
    draws = []
    for _ in range(4):
        rows = np.concatenate(training.order)
        assert sorted(np.asarray(recordings)[rows]) == list(range(6))
        assert len(training) == 2  # 6 recordings, 4 a batch: as many steps as without copies
        draws.append(tuple(sorted(rows)))
        training.next_epoch()
    assert len(set(draws)) > 1  # the copies take turns
    again = batches([10] * 18, recordings=recordings)
    assert [list(rows) for rows in again.order] == [
        list(rows) for rows in batches([10] * 18, recordings=recordings).order
    ]


# Padding and masks


def test_pad_fills_to_the_longest_clip_rounded_up_to_the_multiple():
    fill = np.arange(N_MELS, dtype=np.float32)
    frames = clips([5, 9, 2])
    batch, lengths = pad(frames, fill, multiple=4)
    assert batch.shape == (3, 12, N_MELS) and batch.dtype == np.float32
    np.testing.assert_array_equal(lengths, [5, 9, 2])
    for row, clip in enumerate(frames):
        np.testing.assert_array_equal(batch[row, : len(clip)], clip)
        np.testing.assert_array_equal(
            batch[row, len(clip) :], np.broadcast_to(fill, (12 - len(clip), N_MELS))
        )


@pytest.mark.parametrize(
    ("halvings", "steps", "valid"), [(0, 8, [8, 5, 1]), (1, 4, [4, 3, 1]), (2, 2, [2, 2, 1])]
)
def test_time_mask_keeps_each_clips_own_steps_after_its_halvings(halvings, steps, valid):
    inputs = np.ones((3, steps, 2, 3), np.float32)
    masked = np.asarray(TimeMask(halvings)(inputs, np.array([8, 5, 1], np.int32)))
    for row, count in enumerate(valid):
        np.testing.assert_array_equal(masked[row, :count], 1.0)
        np.testing.assert_array_equal(masked[row, count:], 0.0)


def test_masked_mean_max_pool_ignores_the_padded_steps():
    rng = np.random.default_rng(1)
    inputs = rng.normal(-5, 1, (2, 4, 3, 2)).astype(np.float32)  # max of negatives: not 0
    lengths = np.array([8, 3], np.int32)  # after one halving: 4 and 2 steps
    inputs[1, 2:] = 1e6  # padding that would win both the mean and the max if seen
    pooled = np.asarray(MaskedMeanMaxPool(1)(inputs, lengths))
    assert pooled.shape == (2, 4)
    for row, steps in enumerate([4, 2]):
        per_step = inputs[row, :steps].mean(axis=1)
        np.testing.assert_allclose(pooled[row, :2], per_step.mean(axis=0), rtol=1e-5)
        np.testing.assert_allclose(pooled[row, 2:], per_step.max(axis=0), rtol=1e-5)


def test_the_network_takes_frames_and_lengths_and_ends_in_a_softmax():
    model = fresh_network(channels=(4, 8, 16))
    network = model.network
    kinds = [type(layer).__name__ for layer in network.layers]
    assert kinds.count("MaxPooling2D") == 3 and kinds.count("Conv2D") == 3
    assert model.multiple == 8
    assert [tuple(i.shape) for i in network.inputs] == [(None, None, N_MELS), (None,)]
    assert network.output_shape == (None, len(EMOTIONS))
    batch, lengths = pad(clips([7, 20]), model.fill, model.multiple)
    probabilities = np.asarray(network({"frames": batch, "lengths": lengths}, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_bands_are_standardised_with_the_training_statistics():
    layer = fresh_network().network.get_layer("band_normalisation")
    frames = np.stack([np.full(N_MELS, -20.0), np.full(N_MELS, -12.0)])[np.newaxis]
    np.testing.assert_allclose(
        np.asarray(layer(frames.astype(np.float32)))[0], [[0.0] * N_MELS, [2.0] * N_MELS]
    )


def test_whatever_fills_the_padding_the_prediction_is_the_same():
    model = fresh_network()
    frames = clips([5, 13, 31])
    outputs = []
    for fill in (model.fill, np.full(N_MELS, 1e3, np.float32)):
        batch, lengths = pad(frames, fill, 16)
        outputs.append(
            np.asarray(model.network({"frames": batch, "lengths": lengths}, training=False))
        )
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)


def test_padding_never_changes_a_clips_prediction(trained_model_dir):
    model = SpectrogramCnn.load(trained_model_dir)
    n_mels = len(model.fill)
    rng = np.random.default_rng(4)
    frames = [
        rng.normal(0, 3, (length, n_mels)).astype(np.float32) for length in (1, 6, 13, 17, 40, 63)
    ]
    together = model.predict_proba(pd.DataFrame({FRAMES_COLUMN: frames}))
    for row, clip in enumerate(frames):
        alone = model.predict_proba(pd.DataFrame({FRAMES_COLUMN: [clip]}))
        np.testing.assert_allclose(alone[0], together[row], atol=1e-5)
    assert not np.allclose(together, together[0], atol=1e-4), "clips should differ"


# Augmentation: training batches only


@pytest.mark.parametrize("masks", ["freq", "time"])
def test_spec_augment_fills_masks_with_the_band_means_inside_each_clip(masks):
    hp = SpectrogramCnnParams(
        freq_masks=2 if masks == "freq" else 0,
        freq_mask_bands=3,
        time_masks=2 if masks == "time" else 0,
        time_mask_fraction=0.3,
    )
    frames = clips([4, 10, 16, 16, 7, 12])
    batch, lengths = pad(frames, np.full(N_MELS, -100.0, np.float32), 4)
    original = batch.copy()
    means = np.linspace(-25, -15, N_MELS).astype(np.float32)
    spec_augment(batch, lengths, hp, means, np.random.default_rng(5))
    changed = batch != original
    assert changed.any()
    for row, length in enumerate(lengths):
        assert not changed[row, length:].any(), "padding beyond the clip was touched"
        steps, bands = np.nonzero(changed[row])
        np.testing.assert_array_equal(batch[row, steps, bands], means[bands])
        if masks == "time":  # whole steps: every band
            assert np.all(changed[row][steps].all(axis=1))
        else:  # whole bands over the clip's own steps
            assert np.all(changed[row, :length][:, bands].all(axis=0))


def test_training_batches_are_augmented_and_mixed():
    lengths = [12] * 16  # no padding: every difference comes from augmentation
    augmented, plain = batches(lengths, seed=1), batches(lengths, seed=1, **NO_AUGMENTATION)
    assert [list(rows) for rows in augmented.order] == [list(rows) for rows in plain.order]
    mixed_rows = 0
    for index in range(len(plain)):
        inputs, targets, _ = plain[index]
        expected, _ = pad([plain.frames[i] for i in plain.order[index]], plain.fill, 4)
        np.testing.assert_array_equal(inputs["frames"], expected)
        np.testing.assert_array_equal(targets.max(axis=1), 1.0)
        augmented_inputs, augmented_targets, _ = augmented[index]
        assert not np.array_equal(augmented_inputs["frames"], expected)
        mixed_rows += int(np.sum(augmented_targets.max(axis=1) < 0.99))
    assert mixed_rows > 0


def test_mixup_blends_frames_labels_weights_and_keeps_the_longer_length():
    labels = [0, 0, 0, 0, 1, 2, 3, 4, 5, 6] * 2
    training = batches([8] * 20, labels, freq_masks=0, time_masks=0, mixup_alpha=0.4)
    for i, label in enumerate(labels):  # frames equal to the label: blends show in both
        training.frames[i] = np.full((8, N_MELS), float(label), np.float32)
    weight_of = np.arange(1, len(EMOTIONS) + 1, dtype=np.float32)
    training.weights = weight_of[labels]
    for index in range(len(training)):
        inputs, targets, weights = training[index]
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(
            inputs["frames"][:, 0, 0], targets @ np.arange(len(EMOTIONS)), rtol=1e-5
        )
        np.testing.assert_allclose(weights, targets @ weight_of, rtol=1e-5)
    unequal = batches([3, 9, 5, 12], freq_masks=0, time_masks=0, mixup_alpha=0.4, batch_size=4)
    rows = unequal.order[0]
    inputs, _, _ = unequal[0]
    assert set(inputs["lengths"]) <= set(unequal.lengths[rows])
    assert np.all(inputs["lengths"] >= unequal.lengths[rows])


def test_training_batches_leave_the_clips_untouched():
    training = batches([5, 9, 14, 6, 11, 8])
    before = [f.copy() for f in training.frames]
    for index in range(len(training)):
        training[index]
    for clip, kept in zip(training.frames, before, strict=True):
        np.testing.assert_array_equal(clip, kept)


def test_prediction_is_not_augmented(trained_model_dir):
    model = SpectrogramCnn.load(trained_model_dir)
    n_mels = len(model.fill)
    frames = [
        np.random.default_rng(6).normal(0, 3, (16, n_mels)).astype(np.float32) for _ in range(5)
    ]
    before = [f.copy() for f in frames]
    rows = pd.DataFrame({FRAMES_COLUMN: frames})
    probabilities = model.predict_proba(rows)
    batch, lengths = pad(before, model.fill, model.multiple)
    plain = model.network({"frames": batch, "lengths": lengths}, training=False)
    np.testing.assert_allclose(probabilities, np.asarray(plain), atol=1e-6)
    np.testing.assert_array_equal(model.predict_proba(rows), probabilities)
    for clip, kept in zip(frames, before, strict=True):
        np.testing.assert_array_equal(clip, kept)


# Seeded batches


def contents(training: TrainingBatches) -> list[tuple]:
    return [
        (inputs["frames"], inputs["lengths"], targets, weights)
        for inputs, targets, weights in (training[i] for i in range(len(training)))
    ]


def test_the_same_seed_gives_the_same_batches():
    lengths = list(np.random.default_rng(7).integers(3, 40, 30))
    first, second = contents(batches(lengths)), contents(batches(lengths))
    assert len(first) == len(second) == 8
    for mine, theirs in zip(first, second, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, b)


def test_each_epoch_has_another_order_and_each_seed_its_own():
    lengths = list(np.random.default_rng(7).integers(3, 40, 30))
    training = batches(lengths)
    first = [tuple(rows) for rows in training.order]
    training.next_epoch()
    second = [tuple(rows) for rows in training.order]
    other_seed = [tuple(rows) for rows in batches(lengths, seed=4).order]
    assert second != first and other_seed != first
    for order in (first, second, other_seed):  # every clip once per epoch
        assert sorted(i for rows in order for i in rows) == list(range(len(lengths)))


def test_batches_hold_clips_of_similar_length():
    lengths = list(np.random.default_rng(8).integers(3, 200, 4 * BUCKET_BATCHES))
    training = batches(lengths)  # one run of BUCKET_BATCHES batches, cut in length order
    spans = sorted(
        (min(training.lengths[rows]), max(training.lengths[rows])) for rows in training.order
    )
    assert len(spans) == BUCKET_BATCHES
    for (_, longest), (shortest, _) in itertools.pairwise(spans):
        assert longest <= shortest


def test_the_dataset_serves_one_epoch_after_another():
    lengths = [5, 9, 14, 6, 11, 8, 20, 3, 7]
    training = batches(lengths)
    expected = contents(batches(lengths))
    later = batches(lengths)
    later.next_epoch()
    expected += contents(later)
    served = list(training.dataset().take(len(expected)).as_numpy_iterator())
    assert len(served) == 2 * len(training)
    for (inputs, targets, weights), (frames, steps, mine, my_weights) in zip(
        served, expected, strict=True
    ):
        np.testing.assert_array_equal(inputs["frames"], frames)
        np.testing.assert_array_equal(inputs["lengths"], steps)
        np.testing.assert_array_equal(targets, mine)
        np.testing.assert_array_equal(weights, my_weights)


# Training


def test_training_rows_are_the_originals_unless_augmented_copies_are_asked_for():
    table = feature_table(make_params(), {"train": 1})
    assert set(table["augmentation"]) == {ORIGINAL, "noise"}
    originals = spectrogram_cnn.training_rows(table, SpectrogramCnnParams(augmented_copies=False))
    assert set(originals["augmentation"]) == {ORIGINAL}
    assert len(originals) == len(table) // 2
    assert (
        spectrogram_cnn.training_rows(table, SpectrogramCnnParams(augmented_copies=True)) is table
    )


def test_refit_trains_the_fixed_schedule_on_the_rows_it_is_given(monkeypatch, tmp_path):
    params = kind_params("spectrogram_cnn", {"spectrogram_cnn": {"epochs": 2}})
    table = feature_table(params, {"train": 2, "val": 1})
    rows = select(table, "train", with_augmented=True)
    seen = []
    getitem = TrainingBatches.__getitem__

    def spy(self, index):
        seen.append((self.epoch, index))
        return getitem(self, index)

    monkeypatch.setattr(TrainingBatches, "__getitem__", spy)
    model = spectrogram_cnn.refit(rows, Fitted(None, params, [], {"epochs": 2}))
    originals = rows[rows["augmentation"] == ORIGINAL]  # one of each recording
    steps = -(-len(originals) // params.spectrogram_cnn.batch_size)
    assert int(model.network.optimizer.iterations) == 2 * steps
    assert seen[: 2 * steps] == [(epoch, i) for epoch in range(2) for i in range(steps)]
    stacked = np.concatenate(rows[FRAMES_COLUMN].tolist())  # band statistics of every row
    np.testing.assert_allclose(model.fill, stacked.mean(axis=0), rtol=1e-5)

    model.save(tmp_path)
    test_rows = select(table, "val")
    np.testing.assert_array_equal(
        SpectrogramCnn.load(tmp_path).predict_proba(test_rows), model.predict_proba(test_rows)
    )


DETERMINISM_SCRIPT = """
import json, sys
import numpy as np
from conftest import feature_table, kind_params
from ser.table.store import select
from ser.models import kind_named

params = kind_params("spectrogram_cnn", {"spectrogram_cnn": {"epochs": 2}})
table = feature_table(params, {"train": 2, "val": 1, "test": 1})
fitted = kind_named("spectrogram_cnn").fit(
    select(table, "train", with_augmented=True), select(table, "val"), params, ()
)
np.save(sys.argv[1] + ".npy", fitted.model.predict_proba(select(table, "test")))
with open(sys.argv[1] + ".json", "w") as handle:
    json.dump(fitted.curve, handle)
"""


def test_training_is_the_same_in_two_processes(tmp_path: Path):
    env = project_env(PROJECT_ROOT)
    env["PYTHONPATH"] = f"{PROJECT_ROOT / 'src'}:{PROJECT_ROOT / 'tests'}"
    outputs = [str(tmp_path / f"run{i}") for i in range(2)]
    commands = [[sys.executable, "-c", DETERMINISM_SCRIPT, out] for out in outputs]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda command: run(command, tmp_path, env=env, timeout=300), commands))
    first, second = (np.load(f"{out}.npy") for out in outputs)
    assert first.shape == (14, len(EMOTIONS))
    np.testing.assert_array_equal(first, second)
    curves = [json.loads(Path(f"{out}.json").read_text()) for out in outputs]
    assert curves[0] == curves[1]
    assert [row["epoch"] for row in curves[0]] == [1, 2]
    assert all(0 <= row["val_uar"] <= 1 for row in curves[0])


def test_suggest_samples_the_spectrogram_cnn_space():
    params = make_params(
        {"spectrogram_cnn": {"channels": [8, 16, 32], "peak_learning_rate": 0.001}}
    )
    trial = optuna.trial.FixedTrial(
        {
            "base_channels": 24,
            "dropout": 0.2,
            "learning_rate": 0.0015,
            "mixup_alpha": 0.1,
            "freq_mask_bands": 4,
            "time_mask_fraction": 0.05,
        }
    )
    hp = spectrogram_cnn.suggest(trial, params.tune.space.spectrogram_cnn, params.spectrogram_cnn)
    assert hp.channels == [24, 48, 96]
    assert (hp.dropout, hp.learning_rate, hp.mixup_alpha) == (0.2, 0.0015, 0.1)
    assert (hp.freq_mask_bands, hp.time_mask_fraction) == (4, 0.05)
    assert hp.peak_learning_rate == 0.0015  # never below the starting rate
    assert hp.epochs == params.spectrogram_cnn.epochs
