"""Speech-emotion recognition: a reproducible DVC + MLflow pipeline."""

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
"""The seven labels every corpus is mapped to, in the order the model outputs them."""
ORIGINAL = "none"
"""The ``augmentation`` value of a clip as recorded (augmented copies name their recipe)."""
