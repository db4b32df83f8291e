"""Corpora on disk: their file-name conventions, the manifest of usable clips, the speaker
split, and bringing a corpus into ``data/raw`` (``fetch``)."""
