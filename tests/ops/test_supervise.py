"""A local service stops whole on one Ctrl-C: its leader is asked once, the rest is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, project_env, run

GRACE = 2.0
STUBBORN = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
"""A process that ignores SIGINT and SIGTERM, as Airflow's LocalExecutor workers do."""


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie waiting for its parent counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def start(tmp_path: Path, leader: str) -> tuple[subprocess.Popen, list[int]]:
    """`python -m ser.ops.supervise` of a service whose leader runs ``leader`` after starting
    a stubborn child; the supervisor in a group of its own, as `make` in a terminal; the pids
    of the service's leader and child."""
    pids = tmp_path / "pids"
    service = textwrap.dedent(
        f"""
        import os, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", {STUBBORN!r}])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        {leader}
        """
    )
    command = [sys.executable, "-m", "ser.ops.supervise", "--grace", str(GRACE)]
    supervisor = subprocess.Popen(
        [*command, sys.executable, "-c", service],
        env=project_env(PROJECT_ROOT),
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not pids.is_file() or len(pids.read_text().split()) < 2:
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.1)
    return supervisor, [int(pid) for pid in pids.read_text().split()]


@pytest.mark.parametrize(
    "leader",
    [
        "import time; time.sleep(600)",  # stops on SIGINT, leaving its child behind
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)",
    ],
    ids=["leader-stops", "leader-ignores-ctrl-c"],
)
def test_one_ctrl_c_ends_every_process_of_the_service_within_the_grace(tmp_path, leader):
    supervisor, service = start(tmp_path, leader)
    os.killpg(supervisor.pid, signal.SIGINT)  # what the terminal sends to make and its recipe
    started = time.monotonic()
    assert supervisor.wait(GRACE + 30) == 130
    assert time.monotonic() - started < GRACE + 10
    assert all(gone(pid) for pid in service), "a process of the service was left running"


def test_a_service_that_ends_by_itself_gives_its_exit_status(tmp_path):
    command = [
        sys.executable,
        "-m",
        "ser.ops.supervise",
        sys.executable,
        "-c",
        "raise SystemExit(3)",
    ]
    assert run(command, tmp_path, env=project_env(PROJECT_ROOT), check=False).returncode == 3
