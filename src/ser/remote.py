"""``ser remote``: ``dvc push``, ``pull`` and ``status -c`` bounded in time, failing in one line.

DVC has no timeout for Google Cloud Storage: with the bucket unreachable, gcsfs retries
for half a minute to minutes and ends in a traceback. Here the endpoint is probed first
(seconds), the dvc command then runs with a deadline, and any failure becomes one
:class:`RemoteError` line; dvc's own log goes to ``.dvc/tmp/ser-remote.log``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ACTIONS = {"push": ["push"], "pull": ["pull"], "status": ["status", "--cloud"]}
TIMEOUT_ENV = "SER_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0  # a whole push or pull of the RAVDESS-sized data, with room to spare
PROBE_TIMEOUT_S = 10.0
INTERRUPT_GRACE_S = 5.0  # after SIGINT, before SIGKILL
GCS_ENDPOINT = "https://storage.googleapis.com"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# gcsfs >= 2026 probes every bucket's type over gRPC/TLS; an HTTP emulator never answers,
# which stalls each operation by about a minute.
GCSFS_PROBE_ENV = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
LOG_NAME = "ser-remote.log"


class RemoteError(RuntimeError):
    """A remote operation could not run or did not succeed; the message is one line."""


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    endpoint: str | None  # the JSON API base of a gs:// remote, when configured
    dvc_dir: Path


def resolve_timeout(value: float | None, environ: dict[str, str]) -> float:
    """``value``, else ``$SER_REMOTE_TIMEOUT``, else the default; it must be positive."""
    if value is None:
        raw = environ.get(TIMEOUT_ENV)
        try:
            value = float(raw) if raw else DEFAULT_TIMEOUT_S
        except ValueError:
            raise RemoteError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise RemoteError(f"the timeout must be a positive number of seconds, got {value:g}")
    return value


def resolve_remote(name: str | None = None) -> Remote:
    """The remote ``name`` (default: DVC's default remote) as configured for this repository."""
    from dvc.config import Config, ConfigError

    try:
        config = Config.from_cwd()
    except ConfigError as error:
        raise RemoteError(f"DVC configuration: {error}") from None
    if config.dvc_dir is None:
        raise RemoteError(f"{Path.cwd()} is not inside a DVC repository")
    name = name or config["core"].get("remote")
    if not name:
        raise RemoteError("no DVC remote is set; see docs/gcs.md (dvc remote add -d ...)")
    if name not in config["remote"]:
        raise RemoteError(f"no DVC remote named {name!r}; known: {sorted(config['remote'])}")
    settings = config["remote"][name]
    return Remote(name, settings["url"], settings.get("endpointurl"), Path(config.dvc_dir))


def remote_env(remote: Remote, environ: dict[str, str]) -> dict[str, str]:
    """The environment for dvc: gcsfs's gRPC bucket probe off when an emulator is configured.

    An explicit ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` in ``environ`` is kept.
    """
    env = dict(environ)
    if remote.url.startswith("gs://") and (remote.endpoint or env.get(EMULATOR_ENV)):
        env.setdefault(GCSFS_PROBE_ENV, "false")
    return env


def gcs_endpoint(remote: Remote, environ: dict[str, str]) -> str:
    """Where gcsfs will send requests: ``endpointurl``, else ``$STORAGE_EMULATOR_HOST``, else GCS."""
    if remote.endpoint:
        return remote.endpoint.rstrip("/")
    emulator = environ.get(EMULATOR_ENV, "")
    if emulator not in ("", "default"):
        return (emulator if "://" in emulator else f"http://{emulator}").rstrip("/")
    return GCS_ENDPOINT


def probe(remote: Remote, environ: dict[str, str], timeout: float) -> None:
    """Raise RemoteError unless a gs:// remote's endpoint answers HTTP and knows the bucket.

    Any HTTP answer but 404 counts as reachable (credentials are dvc's business).
    Other kinds of remote are not probed.
    """
    parts = urllib.parse.urlsplit(remote.url)
    if parts.scheme != "gs":
        return
    endpoint = gcs_endpoint(remote, environ)
    url = f"{endpoint}/storage/v1/b/{urllib.parse.quote(parts.netloc)}?fields=name"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            pass
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise RemoteError(
                f"remote {remote.name!r}: bucket {parts.netloc!r} not found at {endpoint}; "
                f"create it, or point the remote at yours: "
                f"dvc remote modify --local {remote.name} url gs://BUCKET/dvcstore"
            ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise RemoteError(
            f"remote {remote.name!r} unreachable: {endpoint} did not answer ({reason}); "
            "nothing was transferred"
        ) from None


def _last_error(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    return (errors or [line for line in lines if line] or ["no output"])[-1]


def _stop(process: subprocess.Popen) -> None:
    """Interrupt dvc and everything it started; kill them if they do not stop in time."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(INTERRUPT_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def run_dvc(command: list[str], env: dict[str, str], timeout: float, log_path: Path) -> None:
    """Run ``command`` (stdout shown, stderr to ``log_path``); stop it after ``timeout`` seconds."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    shown = " ".join(command)
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, env=env, stderr=log_file, start_new_session=True)
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RemoteError(
                f"`{shown}` did not finish in time and was stopped after {timeout:.0f} s "
                f"(raise --timeout or ${TIMEOUT_ENV}); its log: {log_path}"
            ) from None
        finally:
            if process.poll() is None:
                _stop(process)
    if returncode != 0:
        raise RemoteError(f"`{shown}` failed: {_last_error(log_path)} (its log: {log_path})")


def run(
    action: str,
    remote_name: str | None = None,
    timeout: float | None = None,
    targets: Sequence[str] = (),
) -> None:
    """``dvc push``, ``pull`` or ``status --cloud`` (of ``targets``, default all) within ``timeout`` s."""
    environ = dict(os.environ)
    seconds = resolve_timeout(timeout, environ)
    deadline = time.monotonic() + seconds
    remote = resolve_remote(remote_name)
    env = remote_env(remote, environ)
    probe(remote, env, min(PROBE_TIMEOUT_S, seconds))
    command = ["dvc", *ACTIONS[action], "--remote", remote.name, *targets]
    log.debug("running %s (timeout %g s)", " ".join(command), seconds)
    run_dvc(command, env, max(deadline - time.monotonic(), 1.0), remote.dvc_dir / "tmp" / LOG_NAME)
