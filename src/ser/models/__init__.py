"""Model kinds, one module each, chosen by ``model.kind``.

A kind (``ser.models.base.Kind``) names its params section, what it reads of each row
and how it is fitted, refitted on more rows and loaded. Adding a kind means one module
(whose ``KINDS`` lists it) and one entry in ``MODULE_OF``, plus its params section.
A kind's module is imported when the kind is first named, so a command that uses a
linear kind never loads TensorFlow.
"""

from __future__ import annotations

import importlib
import typing

# openSMILE's native library must be loaded before TensorFlow's: in the other order its
# first extraction corrupts the heap ("malloc(): invalid size"). Every module that imports
# TensorFlow or Keras lives in this package, whose initialisation therefore runs first.
import opensmile  # noqa: F401

from ser.config import ModelKind
from ser.models.base import Kind

MODULE_OF: dict[str, str] = {
    "spectrogram_cnn": "spectrogram_cnn",
    "seed_cnn": "seed_cnn",
    "logreg": "linear",
    "linear_svm": "linear",
    "fusion": "fusion",
}
"""The module of ``ser.models`` that defines each kind."""
assert set(MODULE_OF) == set(typing.get_args(ModelKind)), "params' model.kind and MODULE_OF differ"


def kind_named(name: str) -> Kind:
    """The kind ``name`` (``model.kind``), importing its module on first use."""
    if name not in MODULE_OF:
        raise ValueError(f"model.kind {name!r} is not one of {sorted(MODULE_OF)}")
    module = importlib.import_module(f"{__name__}.{MODULE_OF[name]}")
    return next(kind for kind in module.KINDS if kind.name == name)


def all_kinds() -> dict[str, Kind]:
    """Every kind by name (imports every kind's module, TensorFlow included)."""
    return {name: kind_named(name) for name in MODULE_OF}
