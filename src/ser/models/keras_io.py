"""Byte-identical model files: the same trained network saved twice gives the same bytes.

``model.save`` writes a ``.keras`` zip whose bytes change on every save although the model
does not: ``metadata.json`` carries ``date_saved``, the ``model.weights.h5`` entry carries
the time it was written, and ``config.json`` names objects shared by several layers (the
default dtype policy, a regularizer passed to two layers) by their memory address,
``id(obj)``, which differs from process to process. The weights file itself is stable:
h5py records no object times by default (keras writes other, equally stable, bytes
through a temporary file when the weights exceed half the free memory). ``save_keras``
saves with keras, then rewrites those three parts. ``joblib.dump`` of the fitted scikit-learn objects needs nothing: its
bytes already repeat across processes.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import keras

CONFIG_ENTRY = "config.json"
METADATA_ENTRY = "metadata.json"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
UNIX = 3  # zip "created by" system; the zipfile default is 0 on Windows
FILE_MODE = 0o644 << 16


def save_keras(model: keras.Model, path: Path) -> None:
    """Save ``model`` as a ``.keras`` file at ``path`` whose bytes depend only on the model.

    Loads with ``keras.models.load_model(path)`` like any ``.keras`` file (registered
    custom layers included). ``path`` need not end in ``.keras``, so it can be a
    temporary file that an atomic writer moves into place.
    """
    with tempfile.TemporaryDirectory() as scratch:
        saved = Path(scratch) / "model.keras"
        model.save(saved)
        with zipfile.ZipFile(saved) as archive:
            entries = {name: archive.read(name) for name in archive.namelist()}
    entries[CONFIG_ENTRY] = _number_shared_objects(entries[CONFIG_ENTRY])
    entries[METADATA_ENTRY] = _without_save_date(entries[METADATA_ENTRY])
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(entries):
            archive.writestr(_fixed_info(name), entries[name])


def _fixed_info(name: str) -> zipfile.ZipInfo:
    """A zip entry header with nothing in it from the clock, the platform or the umask."""
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.create_system = UNIX
    info.external_attr = FILE_MODE
    info.compress_type = zipfile.ZIP_STORED
    return info


def _number_shared_objects(config_json: bytes) -> bytes:
    """Replace each ``shared_object_id`` (a memory address) by 1, 2, … in order of first
    appearance. Loading only compares these ids with each other, so it rebuilds the same model."""
    numbers: dict[int, int] = {}

    def renumber(node: object) -> None:
        if isinstance(node, dict):
            if "shared_object_id" in node:
                address = node["shared_object_id"]
                node["shared_object_id"] = numbers.setdefault(address, len(numbers) + 1)
            for value in node.values():
                renumber(value)
        elif isinstance(node, list):
            for value in node:
                renumber(value)

    config = json.loads(config_json)
    renumber(config)
    return json.dumps(config).encode()  # keras writes it with the same json.dumps defaults


def _without_save_date(metadata_json: bytes) -> bytes:
    metadata = json.loads(metadata_json)
    metadata.pop("date_saved", None)
    return json.dumps(metadata).encode()
