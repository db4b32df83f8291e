"""Filename conventions of the supported corpora, mapped to the seven labels.

Each parser takes a path and returns a ``ClipInfo`` or ``None`` when the name
does not follow its corpus's convention.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ser.config import CorpusName


@dataclass(frozen=True)
class ClipInfo:
    corpus: CorpusName
    speaker: str  # corpus-qualified, e.g. "ravdess:07", so corpora never share an id
    sex: str  # "male" | "female" | "unknown"
    label: str
    intensity: str  # "normal" | "strong" | "low" | "medium" | "high" | "unspecified"


class UnsupportedClip(ValueError):
    """The name follows a corpus convention but describes a clip we cannot use."""


_RAVDESS = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "neutral",  # calm folds into neutral
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
_RAVDESS_INTENSITY = {"01": "normal", "02": "strong"}


def parse_ravdess(path: Path) -> ClipInfo | None:
    """``MM-VV-EE-II-SS-RR-AA``: audio-only (03) speech (01); odd actors are male."""
    match = _RAVDESS.match(path.stem)
    if not match:
        return None
    modality, channel, emotion, intensity, _, _, actor = match.groups()
    if modality != "03" or channel != "01":
        raise UnsupportedClip(
            f"RAVDESS modality {modality}/vocal channel {channel}: only audio-only speech (03-01)"
        )
    if emotion not in _RAVDESS_EMOTIONS or intensity not in _RAVDESS_INTENSITY:
        raise UnsupportedClip(f"RAVDESS emotion {emotion} or intensity {intensity} is unknown")
    return ClipInfo(
        corpus="ravdess",
        speaker=f"ravdess:{actor}",
        sex="male" if int(actor) % 2 else "female",
        label=_RAVDESS_EMOTIONS[emotion],
        intensity=_RAVDESS_INTENSITY[intensity],
    )


_CREMA_D = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_CREMA_D_EMOTIONS = {
    "NEU": "neutral",
    "HAP": "happy",
    "SAD": "sad",
    "ANG": "angry",
    "FEA": "fearful",
    "DIS": "disgust",
}
_CREMA_D_INTENSITY = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}


@cache
def _crema_d_sexes(folder: Path) -> dict[str, str]:
    """Actor sex from CREMA-D's VideoDemographics.csv, searched upwards from the clip."""
    for directory in (folder, *folder.parents):
        table = directory / "VideoDemographics.csv"
        if table.is_file():
            with table.open(newline="") as handle:
                return {row["ActorID"]: row["Sex"].lower() for row in csv.DictReader(handle)}
    return {}


def parse_crema_d(path: Path) -> ClipInfo | None:
    """``AAAA_SSS_EEE_II``: actor, sentence, emotion, intensity (sex from demographics)."""
    match = _CREMA_D.match(path.stem)
    if not match:
        return None
    actor, _, emotion, intensity = match.groups()
    if emotion not in _CREMA_D_EMOTIONS or intensity not in _CREMA_D_INTENSITY:
        raise UnsupportedClip(f"CREMA-D emotion {emotion} or intensity {intensity} is unknown")
    return ClipInfo(
        corpus="crema_d",
        speaker=f"crema_d:{actor}",
        sex=_crema_d_sexes(path.parent.resolve()).get(actor, "unknown"),
        label=_CREMA_D_EMOTIONS[emotion],
        intensity=_CREMA_D_INTENSITY[intensity],
    )


_TESS = re.compile(r"^(OAF|YAF)_(\w+?)_(angry|disgust|fear|happy|neutral|ps|sad)$", re.IGNORECASE)
_TESS_EMOTIONS = {
    "angry": "angry",
    "disgust": "disgust",
    "fear": "fearful",
    "happy": "happy",
    "neutral": "neutral",
    "ps": "surprised",
    "sad": "sad",
}


def parse_tess(path: Path) -> ClipInfo | None:
    """``OAF_word_emotion`` / ``YAF_word_emotion``: two female speakers; ``ps`` is surprise."""
    match = _TESS.match(path.stem)
    if not match:
        return None
    speaker, _, emotion = match.groups()
    return ClipInfo(
        corpus="tess",
        speaker=f"tess:{speaker.upper()}",
        sex="female",
        label=_TESS_EMOTIONS[emotion.lower()],
        intensity="unspecified",
    )


_SAVEE = re.compile(r"^(?:(DC|JE|JK|KL)_)?(sa|su|a|d|f|h|n)(\d{2})$")
_SAVEE_EMOTIONS = {
    "a": "angry",
    "d": "disgust",
    "f": "fearful",
    "h": "happy",
    "n": "neutral",
    "sa": "sad",
    "su": "surprised",
}
_SAVEE_SPEAKERS = {"DC", "JE", "JK", "KL"}


def parse_savee(path: Path) -> ClipInfo | None:
    """``DC_a01`` or ``DC/a01``: four male speakers, emotion code and number."""
    match = _SAVEE.match(path.stem)
    if not match:
        return None
    speaker, emotion, _ = match.groups()
    speaker = speaker or path.parent.name
    if speaker not in _SAVEE_SPEAKERS:
        return None
    return ClipInfo(
        corpus="savee",
        speaker=f"savee:{speaker}",
        sex="male",
        label=_SAVEE_EMOTIONS[emotion],
        intensity="unspecified",
    )


PARSERS: dict[CorpusName, Callable[[Path], ClipInfo | None]] = {
    "ravdess": parse_ravdess,
    "crema_d": parse_crema_d,
    "tess": parse_tess,
    "savee": parse_savee,
}


def identify(path: Path, corpora: list[CorpusName]) -> ClipInfo:
    """Return the clip's metadata; raise UnsupportedClip when no convention fits."""
    for name in corpora:
        info = PARSERS[name](path)
        if info is not None:
            return info
    raise UnsupportedClip(f"name matches no corpus convention ({', '.join(corpora)})")
