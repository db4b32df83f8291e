"""The seed CNN, built from the chosen hyperparameters."""

from __future__ import annotations

import keras
from keras import layers

from ser.config import ModelParams


def build_cnn(n_features: int, n_classes: int, hp: ModelParams) -> keras.Model:
    """Conv1D stack over the feature vector as designed, ending in a softmax.

    Block 1: three convs (strides 1, 2, 2); block 2: two (1, 2); block 3: one (2);
    each block ends in max-pooling (stride 1) and batch normalisation.
    """
    first, second, third = hp.filters
    conv = dict(kernel_size=hp.kernel_size, padding="same", activation="relu")
    pool = dict(pool_size=hp.pool_size, strides=1, padding="same")
    return keras.Sequential(
        [
            keras.Input(shape=(n_features, 1)),
            layers.Conv1D(first, strides=1, **conv),
            layers.Conv1D(first, strides=2, **conv),
            layers.Conv1D(first, strides=2, **conv),
            layers.MaxPooling1D(**pool),
            layers.BatchNormalization(),
            layers.Conv1D(second, strides=1, **conv),
            layers.Conv1D(second, strides=2, **conv),
            layers.MaxPooling1D(**pool),
            layers.BatchNormalization(),
            layers.Conv1D(third, strides=2, **conv),
            layers.MaxPooling1D(**pool),
            layers.BatchNormalization(),
            layers.Dropout(hp.dropout),
            layers.Flatten(),
            layers.Dense(hp.dense_units[0], activation="relu"),
            layers.Dense(hp.dense_units[1], activation="relu"),
            layers.Dense(n_classes, activation="softmax"),
        ],
        name="seed_cnn",
    )
