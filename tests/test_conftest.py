"""The `run` helper every end-to-end test uses: a hung command fails the test instead of hanging it."""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
from conftest import run

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]

# Starts a detached grandchild (its own session, like `dvc queue start`'s worker daemon)
# that keeps the inherited stdout open for a minute, writes its pid, and exits at once.
LEAVES_A_DAEMON = [
    sys.executable,
    "-c",
    "import subprocess, sys; from pathlib import Path\n"
    "daemon = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
    " start_new_session=True)\n"
    "Path(sys.argv[1]).write_text(str(daemon.pid)); print('started')",
]


def test_a_command_past_its_timeout_is_killed_and_named(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"`.*time\.sleep\(60\).*` in .* timed out after 1 s"):
        run(SLEEP, tmp_path, timeout=1)
    assert time.monotonic() - started < 10


def test_a_daemon_holding_the_output_pipe_fails_at_the_timeout(tmp_path: Path) -> None:
    pid_files = [tmp_path / "piped.pid", tmp_path / "to-file.pid"]
    try:
        with pytest.raises(AssertionError, match="timed out after 2 s"):
            run([*LEAVES_A_DAEMON, str(pid_files[0])], tmp_path, timeout=2)
        started = time.monotonic()
        result = run(
            [*LEAVES_A_DAEMON, str(pid_files[1])], tmp_path, timeout=30, output=tmp_path / "log"
        )
        assert time.monotonic() - started < 10, "waited for the daemon despite output to a file"
        assert result.stdout == "started\n"
    finally:
        for pid_file in pid_files:
            with suppress(FileNotFoundError, ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
