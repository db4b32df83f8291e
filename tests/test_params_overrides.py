"""params.yaml survives sweeps: an `dvc exp run -S` override changes only its own key's lines,
and two in a row leave the file valid.

Every override makes DVC rewrite the whole file (dvc.utils.hydra.apply_overrides): each
list becomes a block list, a null an empty value, and a blank line below a list is dropped.
params.yaml is kept in that form, so the rewrite changes nothing else. A comment that was
on a list's line stays on its key's line (`key:  # ...` above the items), and a later
override that empties that list (`-S 'key=[]'`) then writes corrupted YAML; so params.yaml
keeps comments off list lines. These tests run DVC's own override code on a copy of
params.yaml, for every list the file holds.
"""

from __future__ import annotations

import copy
import difflib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT
from dvc.utils.hydra import apply_overrides
from dvc.utils.serialize import load_yaml

from ser.config import ConfigError, Params, load_params, parse_params

PARAMS_FILE = PROJECT_ROOT / "params.yaml"


def _leaves(node: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Dotted keys and values of every non-mapping value, in file order."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


def _first_number_per_section(params: dict) -> list[str]:
    """One numeric knob per section: the kind of value a sweep overrides (`train.epochs`)."""
    chosen: dict[str, str] = {}
    for key, value in _leaves(params):
        if isinstance(value, int | float) and not isinstance(value, bool):
            chosen.setdefault(key.split(".")[0], key)
    return list(chosen.values())


ORIGINAL: dict = yaml.safe_load(PARAMS_FILE.read_text()) or {}
LIST_KEYS = [key for key, value in _leaves(ORIGINAL) if isinstance(value, list)]
SCALAR_KEYS = _first_number_per_section(ORIGINAL)


def _get(params: dict, key: str) -> object:
    for part in key.split("."):
        params = params[part]
    return params


def _with(params: dict, key: str, value: object) -> dict:
    updated = copy.deepcopy(params)
    *sections, name = key.split(".")
    node = updated
    for part in sections:
        node = node[part]
    node[name] = value
    return updated


def _hydra(value: object) -> str:
    """The value as the right-hand side of a Hydra override (`-S key=<this>`)."""
    if isinstance(value, list):
        return "[" + ",".join(_hydra(item) for item in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def _outcome(load: Callable[[], Params]) -> Params | str:
    try:
        return load()
    except ConfigError as error:
        return str(error)


def _override_and_check(path: Path, expected: dict, key: str, value: object) -> dict:
    """Apply `key=value` as `dvc exp run -S` does; the file must read back as exactly that."""
    apply_overrides(path, [f"{key}={_hydra(value)}"])
    expected = _with(expected, key, value)
    text = path.read_text()
    try:
        written = yaml.safe_load(text)
    except yaml.YAMLError as error:
        pytest.fail(
            f"-S {key}={_hydra(value)} wrote invalid YAML; is a comment on a list's line "
            f"in {PARAMS_FILE.name}? {error}"
        )
    assert written == expected
    assert load_yaml(path) == expected  # what DVC itself reads next
    # the project loader sees the same knobs (or the same schema complaint) as intended
    assert _outcome(lambda: load_params(path)) == _outcome(lambda: parse_params(expected, path))
    return expected


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS_FILE, path)
    return path


def test_the_file_has_lists_and_numbers_to_sweep():
    assert LIST_KEYS
    assert SCALAR_KEYS


def changed_lines(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


@pytest.mark.parametrize(("key", "value"), [("train.seed", 42), ("linear.C", 0.02)])
def test_one_override_changes_only_its_own_line(params_copy, key, value):
    before = params_copy.read_text()
    apply_overrides(params_copy, [f"{key}={value}"])
    changed = changed_lines(before, params_copy.read_text())
    name = key.split(".")[-1]
    unchanged = yaml.safe_load(before) == _with(yaml.safe_load(before), key, value)
    assert len(changed) == (0 if unchanged else 2), changed
    assert all(line[1:].lstrip().startswith(f"{name}:") for line in changed)


@pytest.mark.parametrize("key", LIST_KEYS)
def test_list_survives_being_set_then_emptied(params_copy, key):
    """A one-element list, then `-S 'key=[]'`: the second rewrite is the one that can corrupt."""
    expected = yaml.safe_load(params_copy.read_text())
    for value in (_get(expected, key)[:1] or [0], []):
        expected = _override_and_check(params_copy, expected, key, value)


@pytest.mark.parametrize("key", SCALAR_KEYS)
def test_scalar_survives_two_overrides(params_copy, key):
    expected = yaml.safe_load(params_copy.read_text())
    original = _get(expected, key)
    for step in (1, 2):
        expected = _override_and_check(params_copy, expected, key, original + step)
