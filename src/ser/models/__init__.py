"""Model kinds, one module each, chosen by ``model.kind``.

A kind (``ser.models.base.Kind``) names its params section, what it reads of each row
and how it is fitted, refitted on more rows and loaded. Adding a kind means one module
and one entry in ``KINDS``, plus its params section.
"""

from __future__ import annotations

from ser.models import fusion, linear, seed_cnn, spectrogram_cnn
from ser.models.base import Kind

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (spectrogram_cnn.KIND, seed_cnn.KIND, linear.LOGREG, linear.LINEAR_SVM, fusion.KIND)
}


def kind_named(name: str) -> Kind:
    """The registered kind ``name`` (model.kind)."""
    if name not in KINDS:
        raise ValueError(f"model.kind {name!r} is not one of {sorted(KINDS)}")
    return KINDS[name]
