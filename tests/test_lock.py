"""requirements.lock: every package pyproject.toml asks for, pinned, installable from PyPI alone,
and the one the Docker image installs from."""

from __future__ import annotations

import re
import tomllib

from conftest import PROJECT_ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = PROJECT_ROOT / "requirements.lock"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)(?:\s*;.*)?$")


def lock_lines() -> list[str]:
    """The lock's requirement lines, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in LOCK.read_text().splitlines())
    return [line for line in lines if line]


def pinned() -> dict[str, str]:
    return {
        canonicalize_name(match["name"]): match["version"]
        for match in map(PIN.match, lock_lines())
        if match
    }


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [
        Requirement(text) for text in [*project["dependencies"], *extras["dev"], *extras["airflow"]]
    ]


def test_every_requirement_of_the_project_is_pinned_at_a_version_it_allows():
    versions = pinned()
    stale = []
    for requirement in project_requirements():
        version = versions.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            stale.append(f"{requirement} ({version or 'absent'})")
    assert not stale, f"{LOCK.name} does not pin {stale}: run `make lock`"


def test_every_line_pins_a_package_from_the_index():
    """No editable installs, paths, URLs or index options: a fresh machine installs it from PyPI."""
    assert [line for line in lock_lines() if not PIN.match(line)] == []
    assert "make lock" in LOCK.read_text().splitlines()[1]  # how to refresh it


def test_the_image_installs_the_locked_versions_on_its_own_airflow():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM apache/airflow:(\S+)-python", dockerfile, re.MULTILINE)
    assert base and pinned()["apache-airflow"] == base[1]
    assert re.search(r"^COPY .*\brequirements\.lock\b", dockerfile, re.MULTILINE)
    assert re.search(r"pip install [^\n]*-c /opt/ser/requirements\.lock", dockerfile)
