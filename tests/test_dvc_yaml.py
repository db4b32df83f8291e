"""dvc.yaml: every stage depends on the code it runs, so ``dvc repro`` never calls stale
outputs up to date.

A stage runs its module under ``src/ser/stages/`` and every module of the package that module
imports, transitively: lazy imports inside functions included, and each imported module's
packages, whose ``__init__`` runs first. A declared folder covers every module under it.
The params sections a stage declares are checked by the stage's own tests, which record
the sections its run reads (``conftest.sections_read``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT

from ser.cli import STAGES
from ser.config import Params

PACKAGE = "ser"


def stage_declarations(root: Path = PROJECT_ROOT) -> dict[str, dict]:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def module_files(name: str, source: Path) -> list[Path]:
    """The files that importing ``name`` (``ser.a.b``) executes: each package's ``__init__.py``
    on the way, and the module itself."""
    parts = name.split(".")
    files = [source.joinpath(*parts[:depth], "__init__.py") for depth in range(1, len(parts) + 1)]
    return [path for path in [*files, source.joinpath(*parts).with_suffix(".py")] if path.is_file()]


def imported_files(module: Path, source: Path) -> set[Path]:
    """The package's files that the imports anywhere in ``module`` execute."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE:
                found.update(module_files(name, source))
    return found


def code_of(entry: str, source: Path) -> set[Path]:
    """Every file of the package that importing module ``entry`` executes, transitively."""
    seen: set[Path] = set()
    todo = module_files(entry, source)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imported_files(module, source))
    return seen


def undeclared(stage: dict, code: set[Path], root: Path) -> list[str]:
    """The files of ``code`` that no dependency of ``stage`` (a file or a folder) covers."""
    declared = [root / dep for dep in stage.get("deps", [])]
    return sorted(
        str(path.relative_to(root))
        for path in code
        if not any(path == dep or dep in path.parents for dep in declared)
    )


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_runs_its_own_module_through_the_ser_command(stage):
    declared = stage_declarations()[stage]
    assert declared["cmd"] == f"ser {stage}"
    assert f"src/ser/stages/{stage}.py" in declared["deps"]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_depends_on_every_module_it_runs(stage):
    source = PROJECT_ROOT / "src"
    code = code_of(f"ser.stages.{stage}", source)
    assert undeclared(stage_declarations()[stage], code, PROJECT_ROOT) == []


def test_declared_params_sections_exist_and_mlflow_settings_are_none_of_them():
    for name, stage in stage_declarations().items():
        sections = [s for s in stage.get("params", []) if isinstance(s, str)]
        assert set(sections) <= set(Params.model_fields), name
        assert "mlflow" not in sections, f"{name}: MLflow settings change no output"


def test_the_code_of_a_stage_follows_lazy_imports_and_packages(tmp_path):
    files = {
        "ser/__init__.py": "",
        "ser/stages/__init__.py": "",
        "ser/stages/fit.py": "import json\n\ndef run():\n    from ser.models import linear\n",
        "ser/models/__init__.py": "from ser import config\n",
        "ser/models/linear.py": "",
        "ser/config.py": "",
        "ser/cli.py": "from ser.stages import fit\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    code = code_of("ser.stages.fit", tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in code) == [
        "ser/__init__.py",
        "ser/config.py",
        "ser/models/__init__.py",
        "ser/models/linear.py",
        "ser/stages/__init__.py",
        "ser/stages/fit.py",
    ]
    stage = {"deps": ["ser/stages/fit.py", "ser/models", "ser/__init__.py"]}
    assert undeclared(stage, code, tmp_path) == ["ser/config.py", "ser/stages/__init__.py"]
