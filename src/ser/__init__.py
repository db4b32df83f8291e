"""Speech-emotion recognition: a reproducible DVC + MLflow pipeline."""

# openSMILE's native library must be loaded before TensorFlow's: in the other order its
# first extraction corrupts the heap ("malloc(): invalid size"). Every entry point and
# test imports this package first, so loading it here fixes the order everywhere.
import opensmile  # noqa: F401

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
"""The seven labels every corpus is mapped to, in the order the model outputs them."""
ORIGINAL = "none"
"""The ``augmentation`` value of a clip as recorded (augmented copies name their recipe)."""
