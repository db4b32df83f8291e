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


def test_project_params_file_loads():
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.split.val_fraction + params.split.test_fraction < 1


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
        ({"model": {"filters": [64, 128]}}, "model.filters.2: Field required"),
        ({"audio": {"target_dbfs": 3.0}}, "audio.target_dbfs"),
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
    flat = flatten(parse_params({"augment": {"copies": [["noise", "pitch"]]}}))
    assert flat["train.epochs"] == Params().train.epochs
    assert flat["data.raw_dir"] == "data/raw"
    assert flat["model.filters"] == "64,128,256"
    assert flat["augment.copies"] == "['noise', 'pitch']"
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in flat.values())
    assert set(flat) >= {f"{section}.seed" for section in ("split", "augment", "train")}
