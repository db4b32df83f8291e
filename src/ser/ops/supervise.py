"""Run a local service so that one Ctrl-C stops all of it (``make airflow-standalone``).

``airflow standalone`` runs the scheduler, DAG processor, API server and triggerer, and the
scheduler runs LocalExecutor workers. A Ctrl-C in the terminal signals every one of them
at once, and ``standalone`` then sends each component SIGTERM as well; the scheduler,
interrupted by the second signal while it logs its shutdown, waits forever on its own log
lock (Airflow 3.3), so ``standalone`` waits for it and a second Ctrl-C leaves the scheduler
and its workers running.

Here the service runs in a session of its own, out of the terminal's reach; a Ctrl-C (or
SIGTERM) is passed on to its leader alone, once, and whatever of its process group is still
there after a grace period is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 20.0
KILL_WAIT_S = 10.0  # for the kernel to end what SIGKILL hit
POLL_S = 0.2


def group_alive(group: int) -> bool:
    """Whether any process of process group ``group`` is left."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def ended(process: subprocess.Popen, seconds: float) -> bool:
    """Wait up to ``seconds`` for the process group led by ``process`` to end."""
    deadline = time.monotonic() + seconds
    while group_alive(process.pid):
        process.poll()  # reap the leader, so that it does not linger as a zombie
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def supervise(command: Sequence[str], grace: float = DEFAULT_GRACE_S) -> int:
    """Run ``command`` in a new session until it exits, or until SIGINT or SIGTERM here.

    Then the leader gets SIGINT, the group ``grace`` seconds to end, and SIGKILL for what
    is left. Returns the command's exit status (130 when it was stopped here).
    """
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        process = subprocess.Popen(command, start_new_session=True)
        while process.poll() is None and not stop.is_set():
            stop.wait(POLL_S)
        if process.poll() is not None and not group_alive(process.pid):
            return process.returncode
        log.info("stopping %s (process group %d, %g s grace)", command[0], process.pid, grace)
        with contextlib.suppress(ProcessLookupError):  # the leader may be gone, its group not
            os.kill(process.pid, signal.SIGINT)
        if not ended(process, grace):
            log.warning("%s did not stop in %g s: killing its process group", command[0], grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            ended(process, KILL_WAIT_S)
        process.wait()
        return 130 if stop.is_set() else process.returncode
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        help="seconds the service has to stop after Ctrl-C (default: %(default)s)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the service's command line")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("no command given")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return supervise(args.command, args.grace)


if __name__ == "__main__":
    sys.exit(main())
