"""The seed CNN, built from the chosen hyperparameters."""

from __future__ import annotations

import keras
from keras import layers

from ser.config import ModelParams


def build_cnn(n_features: int, n_classes: int, hp: ModelParams) -> keras.Model:
    """Conv1D stack over the feature vector as designed, ending in a softmax.

    Block 1: three convs (strides 1, 2, 2); block 2: two (1, 2); block 3: one (2);
    each block ends in max-pooling (stride 1) and batch normalisation. Two optional
    regularisers leave the layer stack as designed: ``hp.input_noise`` adds Gaussian
    noise to the inputs while training only, ``hp.l2`` penalises the dense weights.
    """
    first, second, third = hp.filters
    noise = [layers.GaussianNoise(hp.input_noise)] if hp.input_noise > 0 else []
    dense = dict(
        activation="relu", kernel_regularizer=keras.regularizers.L2(hp.l2) if hp.l2 else None
    )
    conv = dict(kernel_size=hp.kernel_size, padding="same", activation="relu")
    pool = dict(pool_size=hp.pool_size, strides=1, padding="same")
    return keras.Sequential(
        [
            keras.Input(shape=(n_features, 1)),
            *noise,
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
            layers.Dense(hp.dense_units[0], **dense),
            layers.Dense(hp.dense_units[1], **dense),
            layers.Dense(n_classes, activation="softmax"),
        ],
        name="seed_cnn",
    )
