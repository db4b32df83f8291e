"""File-name conventions of RAVDESS, CREMA-D, TESS and SAVEE."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_RAVDESS

from ser import EMOTIONS
from ser.corpus.conventions import (
    ClipInfo,
    UnsupportedClip,
    identify,
    parse_crema_d,
    parse_ravdess,
    parse_savee,
    parse_tess,
)

ALL = ["ravdess", "crema_d", "tess", "savee"]


@pytest.mark.parametrize(
    ("name", "label", "sex", "intensity"),
    [
        ("03-01-01-01-01-01-01.wav", "neutral", "male", "normal"),
        ("03-01-02-02-02-02-01.wav", "neutral", "male", "strong"),  # calm folds into neutral
        ("03-01-03-01-01-01-02.wav", "happy", "female", "normal"),
        ("03-01-04-02-01-01-13.flac", "sad", "male", "strong"),
        ("03-01-05-01-01-01-24.wav", "angry", "female", "normal"),
        ("03-01-06-01-01-01-07.wav", "fearful", "male", "normal"),
        ("03-01-07-01-01-01-08.wav", "disgust", "female", "normal"),
        ("03-01-08-02-01-01-11.wav", "surprised", "male", "strong"),
    ],
)
def test_ravdess_fields(name, label, sex, intensity):
    actor = Path(name).stem[-2:]
    info = parse_ravdess(Path("Actor_x") / name)
    assert info == ClipInfo("ravdess", f"ravdess:{actor}", sex, label, intensity)


@pytest.mark.parametrize(
    "name",
    [
        "01-01-01-01-01-01-01.mp4",  # audio-video
        "02-01-01-01-01-01-01.mp4",  # video only
        "03-02-01-01-01-01-01.wav",  # song
    ],
)
def test_ravdess_other_modalities_are_rejected(name):
    with pytest.raises(UnsupportedClip, match="only audio-only speech"):
        parse_ravdess(Path(name))


@pytest.mark.parametrize("name", ["03-01-09-01-01-01-01.wav", "03-01-01-03-01-01-01.wav"])
def test_ravdess_unknown_codes_are_rejected(name):
    with pytest.raises(UnsupportedClip, match="unknown"):
        parse_ravdess(Path(name))


def test_ravdess_ignores_other_names():
    assert parse_ravdess(Path("03-01-01-01-01-01.wav")) is None
    assert parse_ravdess(Path("1001_DFA_ANG_XX.wav")) is None


def test_crema_d_without_demographics_has_unknown_sex(tmp_path):
    info = parse_crema_d(tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav")
    assert info == ClipInfo("crema_d", "crema_d:1001", "unknown", "angry", "unspecified")


def test_crema_d_reads_sex_from_demographics_above_the_clip(tmp_path):
    (tmp_path / "VideoDemographics.csv").write_text(
        "ActorID,Age,Sex,Race,Ethnicity\n"
        "1001,51,Male,Caucasian,Not Hispanic\n"
        "1002,21,Female,Caucasian,Not Hispanic\n"
    )
    folder = tmp_path / "AudioWAV"
    assert parse_crema_d(folder / "1001_DFA_HAP_HI.wav").sex == "male"
    female = parse_crema_d(folder / "1002_IEO_SAD_LO.wav")
    assert (female.sex, female.label, female.intensity) == ("female", "sad", "low")
    assert parse_crema_d(folder / "1003_IEO_NEU_MD.wav").sex == "unknown"


@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("NEU", "neutral"),
        ("HAP", "happy"),
        ("SAD", "sad"),
        ("ANG", "angry"),
        ("FEA", "fearful"),
        ("DIS", "disgust"),
    ],
)
def test_crema_d_emotions(tmp_path, code, label):
    assert parse_crema_d(tmp_path / f"1050_TIE_{code}_MD.wav").label == label


def test_crema_d_unknown_codes_are_rejected(tmp_path):
    with pytest.raises(UnsupportedClip, match="CREMA-D emotion SUR"):
        parse_crema_d(tmp_path / "1001_DFA_SUR_XX.wav")
    with pytest.raises(UnsupportedClip, match="intensity ZZ"):
        parse_crema_d(tmp_path / "1001_DFA_ANG_ZZ.wav")


@pytest.mark.parametrize(
    ("name", "speaker", "label"),
    [
        ("OAF_back_ps.wav", "tess:OAF", "surprised"),
        ("YAF_dog_fear.wav", "tess:YAF", "fearful"),
        ("OAF_bite_neutral.wav", "tess:OAF", "neutral"),
        ("yaf_Date_Angry.wav", "tess:YAF", "angry"),  # case varies in the distributed files
        ("YAF_chair_PS.WAV", "tess:YAF", "surprised"),
    ],
)
def test_tess(name, speaker, label):
    assert parse_tess(Path(name)) == ClipInfo("tess", speaker, "female", label, "unspecified")


def test_tess_ignores_unknown_emotion_and_speaker():
    assert parse_tess(Path("OAF_back_bored.wav")) is None
    assert parse_tess(Path("MAF_back_sad.wav")) is None


@pytest.mark.parametrize(
    ("path", "speaker", "label"),
    [
        ("ALL/DC_a01.wav", "savee:DC", "angry"),
        ("ALL/KL_sa15.wav", "savee:KL", "sad"),
        ("ALL/JE_su03.wav", "savee:JE", "surprised"),
        ("AudioData/DC/a01.wav", "savee:DC", "angry"),
        ("AudioData/JK/n30.wav", "savee:JK", "neutral"),
        ("AudioData/JK/d02.wav", "savee:JK", "disgust"),
        ("AudioData/KL/f07.wav", "savee:KL", "fearful"),
        ("AudioData/JE/h11.wav", "savee:JE", "happy"),
    ],
)
def test_savee_both_layouts(path, speaker, label):
    assert parse_savee(Path(path)) == ClipInfo("savee", speaker, "male", label, "unspecified")


def test_savee_needs_a_known_speaker():
    assert parse_savee(Path("AudioData/XY/a01.wav")) is None
    assert parse_savee(Path("a01.wav")) is None
    assert parse_savee(Path("ALL/XY_a01.wav")) is None


def test_identify_tries_each_requested_corpus():
    assert identify(Path("03-01-05-01-01-01-03.wav"), ALL).corpus == "ravdess"
    assert identify(Path("1001_DFA_ANG_XX.wav"), ALL).corpus == "crema_d"
    assert identify(Path("OAF_back_ps.wav"), ALL).corpus == "tess"
    assert identify(Path("DC/a01.wav"), ALL).corpus == "savee"


@pytest.mark.parametrize("name", ["hello.wav", "03-01-05-01.wav", "DC_x01.wav", "OAF_ps.wav"])
def test_non_matching_names_raise(name):
    with pytest.raises(UnsupportedClip, match="matches no corpus convention"):
        identify(Path(name), ALL)


def test_identify_only_uses_the_listed_corpora():
    with pytest.raises(UnsupportedClip, match=r"\(tess, savee\)"):
        identify(Path("03-01-05-01-01-01-03.wav"), ["tess", "savee"])


def test_speaker_ids_are_corpus_qualified():
    ravdess = identify(Path("03-01-05-01-01-01-01.wav"), ALL)
    crema = identify(Path("0001_DFA_ANG_XX.wav"), ALL)
    assert ravdess.speaker != crema.speaker
    assert {ravdess.label, crema.label} <= set(EMOTIONS)


@pytest.mark.skipif(not SHARED_RAVDESS.is_dir(), reason="shared RAVDESS copy not present")
def test_every_shared_ravdess_name_parses():
    paths = sorted(SHARED_RAVDESS.rglob("*.flac"))
    infos = [identify(path, ALL) for path in paths]
    assert len(infos) == 1200
    assert {info.corpus for info in infos} == {"ravdess"}
    speakers = {info.speaker: info.sex for info in infos}
    assert len(speakers) == 20
    assert sorted(speakers.values()).count("male") == 10
    assert sorted(speakers.values()).count("female") == 10
    assert {info.label for info in infos} == set(EMOTIONS)
    for path, info in zip(paths, infos, strict=True):
        assert path.parent.name == f"Actor_{info.speaker.split(':')[1]}"
