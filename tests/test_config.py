"""params.yaml loading and validation: bad knobs fail fast and name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT

from ser.config import ConfigError, Params, flatten, load_params, parse_params


def write_params(tmp_path: Path, params: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def dotted(mapping: dict, prefix: str = "") -> dict[str, object]:
    """Nested sections as ``section.key`` (``tune.space.seed_cnn.dropout``) -> value."""
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat |= dotted(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_project_params_file_loads():
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.split.val_fraction + params.split.test_fraction < 1


def test_defaults_in_code_agree_with_params_yaml():
    """What runs without a params.yaml is what the project's params.yaml says."""
    defaults = dotted(Params().model_dump())
    project = dotted(load_params(PROJECT_ROOT / "params.yaml").model_dump())
    differing = {
        key: (defaults.get(key, "(missing)"), project.get(key, "(missing)"))
        for key in sorted(defaults.keys() | project.keys())
        if defaults.get(key, "(missing)") != project.get(key, "(missing)")
    }
    assert differing == {}, "config.py default vs params.yaml"


def test_params_yaml_spells_out_every_knob():
    written = dotted(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()))
    known = dotted(Params().model_dump(mode="json"))
    assert sorted(known.keys() - written.keys()) == [], "knobs params.yaml leaves out"


def test_empty_file_gives_the_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_params(path) == Params()


def test_partial_section_keeps_other_defaults(tmp_path):
    params = load_params(write_params(tmp_path, {"train": {"epochs": 5}}))
    assert params.train.epochs == 5
    assert params.train.seed == Params().train.seed
    assert params.features == Params().features


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"epoch": 3}}, "train.epoch"),
        ({"trian": {"epochs": 3}}, "trian"),
        ({"features": {"n_mels": 64, "colour": "blue"}}, "features.colour"),
        ({"frames": {"n_mel": 40}}, "frames.n_mel"),
        ({"spectrogram_cnn": {"chanels": [8, 16]}}, "spectrogram_cnn.chanels"),
        ({"fusion": {"weight": 0.7}}, "fusion.weight"),
        ({"preprocessing": {"select": 10}}, "preprocessing.select"),
        ({"linear": {"c": 1.0}}, "linear.c"),
        ({"model": {"filters": [64, 128, 256]}}, "model.filters"),  # now seed_cnn.filters
        (
            {"tune": {"space": {"spectrogram_cnn": {"filters": [8]}}}},
            "tune.space.spectrogram_cnn.filters",
        ),
        ({"tune": {"space": {"fusion": {}}}}, "tune.space.fusion"),
        ({"spectrogram": {"epochs": 3}}, "spectrogram"),
    ],
)
def test_unknown_key_is_named(tmp_path, raw, key):
    path = write_params(tmp_path, raw)
    with pytest.raises(ConfigError) as error:
        load_params(path)
    message = str(error.value)
    assert f"{key}: unknown key" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"split": {"seed": [1, 2]}}, "split.seed"),
        ({"data": {"corpora": ["ravdess", "iemocap"]}}, "data.corpora.1"),
        ({"train": {"monitor": "val_accuracy"}}, "train.monitor"),
        ({"seed_cnn": {"filters": [64, 128]}}, "seed_cnn.filters.2: Field required"),
        ({"audio": {"target_dbfs": 3.0}}, "audio.target_dbfs"),
        ({"model": {"kind": "resnet"}}, "model.kind"),
        ({"frames": {"n_mels": 4}}, "frames.n_mels"),
        ({"frames": {"fmax": 0}}, "frames.fmax"),
        ({"spectrogram_cnn": {"channels": []}}, "spectrogram_cnn.channels"),
        ({"spectrogram_cnn": {"channels": [8, 0]}}, "spectrogram_cnn.channels.1"),
        ({"spectrogram_cnn": {"dropout": 1.0}}, "spectrogram_cnn.dropout"),
        ({"fusion": {"weights": []}}, "fusion.weights"),
        ({"fusion": {"weights": [0.5, 1.5]}}, "fusion.weights.1"),
        ({"fusion": {"pooling": "product"}}, "fusion.pooling"),
        ({"preprocessing": {"select_k": 0}}, "preprocessing.select_k"),
        ({"linear": {"C_grid": [0.1, -1.0]}}, "linear.C_grid.1"),
        (
            {"tune": {"space": {"spectrogram_cnn": {"base_channels": []}}}},
            "tune.space.spectrogram_cnn.base_channels",
        ),
    ],
)
def test_wrong_type_or_value_is_named(raw, key):
    with pytest.raises(ConfigError) as error:
        parse_params(raw)
    assert f"\n  {key}" in str(error.value)


def test_impossible_split_is_rejected():
    with pytest.raises(ConfigError) as error:
        parse_params({"split": {"val_fraction": 0.5, "test_fraction": 0.5}})
    message = str(error.value)
    assert "split:" in message
    assert "val_fraction + test_fraction" in message


@pytest.mark.parametrize(
    ("raw", "section", "reason"),
    [
        (
            {"frames": {"n_fft": 512, "win_length": 640}},
            "frames",
            "win_length (640) cannot exceed n_fft (512)",
        ),
        ({"frames": {"fmin": 300.0, "fmax": 300.0}}, "frames", "fmax (300.0) must be above fmin"),
        (
            {"frames": {"fmin": 4000.0, "fmax": 2000.0}},
            "frames",
            "fmax (2000.0) must be above fmin",
        ),
        (
            {"spectrogram_cnn": {"learning_rate": 0.01, "peak_learning_rate": 0.001}},
            "spectrogram_cnn",
            "peak_learning_rate must be at least learning_rate",
        ),
        (
            {"tune": {"space": {"spectrogram_cnn": {"dropout": [0.5, 0.1]}}}},
            "tune.space.spectrogram_cnn",
            "dropout must be [low, high]",
        ),
        (
            {"tune": {"space": {"spectrogram_cnn": {"learning_rate": [0.0, 0.01]}}}},
            "tune.space.spectrogram_cnn",
            "learning_rate range must be positive",
        ),
        (
            {"tune": {"space": {"seed_cnn": {"dropout": [0.2, 1.0]}}}},
            "tune.space.seed_cnn",
            "dropout range must lie in [0, 1)",
        ),
    ],
)
def test_inconsistent_section_is_named_with_the_reason(raw, section, reason):
    with pytest.raises(ConfigError) as error:
        parse_params(raw)
    assert f"\n  {section}: " in str(error.value)
    assert reason in str(error.value)


def test_a_valid_frames_section_is_accepted_as_written():
    frames = {"n_mels": 64, "n_fft": 512, "win_length": 512, "fmin": 0.0, "fmax": None}
    params = parse_params({"frames": frames, "model": {"kind": "fusion"}})
    assert params.frames.model_dump(include=set(frames)) == frames
    assert params.model.kind == "fusion"


@pytest.mark.parametrize("sample_rate", [8000, 11025])
def test_frames_fmax_above_the_nyquist_frequency_is_rejected(sample_rate):
    """Bands above sample_rate / 2 would hold no energy: constant -100 dB inputs."""
    with pytest.raises(ConfigError) as error:
        parse_params({"audio": {"sample_rate": sample_rate}, "frames": {"fmax": 8000.0}})
    assert "frames" in str(error.value)
    assert "fmax" in str(error.value)


def test_n_mfcc_above_n_mels_is_rejected():
    with pytest.raises(ConfigError) as error:
        parse_params({"features": {"n_mels": 16, "n_mfcc": 20}})
    message = str(error.value)
    assert "features:" in message
    assert "n_mfcc (20) cannot exceed n_mels (16)" in message


@pytest.mark.parametrize("key", ["noise_snr_db", "pitch_semitones", "stretch_rate"])
def test_reversed_augment_range_is_named(key):
    with pytest.raises(ConfigError, match=key):
        parse_params({"augment": {key: [2.0, 1.0]}})


def test_empty_augment_recipe_is_rejected():
    with pytest.raises(ConfigError, match="copies"):
        parse_params({"augment": {"copies": [["noise"], []]}})


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: [3\n")
    with pytest.raises(ConfigError, match="not valid YAML") as error:
        load_params(path)
    assert str(path) in str(error.value)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError, match="cannot read") as error:
        load_params(path)
    assert str(path) in str(error.value)


def test_top_level_list_is_rejected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- train\n- epochs\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        load_params(path)


def test_params_are_frozen():
    params = Params()
    with pytest.raises(ValueError, match="frozen"):
        params.train.epochs = 1


def test_flatten_gives_dotted_scalar_keys():
    flat = flatten(
        parse_params({"augment": {"copies": [["noise", "pitch"]]}, "model": {"kind": "logreg"}})
    )
    assert flat["train.epochs"] == Params().train.epochs
    assert flat["data.raw_dir"] == "data/raw"
    assert flat["seed_cnn.filters"] == "64,128,256"
    assert flat["model.kind"] == "logreg"
    assert flat["frames.fmax"] == 4000.0
    assert flat["frames.top_db"] == 60.0
    assert flat["tune.space.spectrogram_cnn.base_channels"] == "16,24,32"
    assert flat["augment.copies"] == "['noise', 'pitch']"
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in flat.values())
    assert set(flat) >= {f"{section}.seed" for section in ("split", "augment", "train")}
