"""``ser remote``: ``dvc push``, ``pull`` and ``status -c`` bounded in time, failing in one line,
and ``setup``, which makes a bucket this clone's default remote.

The committed ``.dvc/config`` names no remote, so a fresh clone's commands never try to
reach one; ``ser remote setup gs://BUCKET/PATH`` writes the remote to the git-ignored
``.dvc/config.local``, with ``verify`` on.

DVC has no timeout for Google Cloud Storage: with the bucket unreachable, gcsfs retries
for half a minute to minutes and ends in a traceback. Here the endpoint is probed first
(seconds), the dvc commands then run with a deadline, and any failure becomes one
:class:`RemoteError` line; dvc's own log goes to ``.dvc/tmp/ser-remote.log``.

A pull is ``dvc fetch`` then ``dvc checkout``. With the remote's ``verify`` option (on for
a remote that ``setup`` wrote) dvc rehashes each download and silently deletes
one that does not match; plain ``dvc pull`` then fails at checkout with "Is your cache up
to date?" and removes the whole output it could not complete. Here such a fetch stops the
pull before checkout, naming the files, so the workspace is left as it was.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from ser.errors import SerError

log = logging.getLogger(__name__)

ACTIONS = {"push": ["push"], "status": ["status", "--cloud"]}  # a pull: fetch, then checkout
DEFAULT_NAME = "gcs"
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
# dvc's log lines, with or without --verbose's timestamp; the debug line of a discarded download.
ERROR_LINE = re.compile(r"^(?:\S+ \S+ )?ERROR: (?P<message>.*)$")
DISCARDED_LINE = re.compile(r"DEBUG: corrupted cache file '(?P<path>[^']+)'")
SHOWN_FILES = 5  # corrupt files named in the error; the rest are counted


class RemoteError(SerError, RuntimeError):
    """A remote operation could not run or did not succeed; the message is one line."""


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    endpoint: str | None  # the JSON API base of a gs:// remote, when configured
    dvc_dir: Path
    verify: bool = False  # dvc rehashes every download from it


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
        raise RemoteError(
            "no DVC remote is set: `ser remote setup gs://BUCKET/PATH` names yours (docs/gcs.md)"
        )
    if name not in config["remote"]:
        raise RemoteError(f"no DVC remote named {name!r}; known: {sorted(config['remote'])}")
    settings = config["remote"][name]
    return Remote(
        name,
        settings["url"],
        settings.get("endpointurl"),
        Path(config.dvc_dir),
        bool(settings.get("verify")),
    )


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
    errors = [match["message"] for line in lines if (match := ERROR_LINE.match(line))]
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


def run_dvc(
    command: list[str], env: dict[str, str], timeout: float, log_path: Path, quiet: bool = False
) -> None:
    """Run ``command``, its stderr (and stdout if ``quiet``) appended to ``log_path``.

    It is stopped after ``timeout`` seconds.
    """
    shown = " ".join(command)
    with log_path.open("a") as log_file:
        stdout = log_file if quiet else None
        process = subprocess.Popen(
            command, env=env, stdout=stdout, stderr=log_file, start_new_session=True
        )
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


def discarded_downloads(log_path: Path) -> list[str]:
    """Objects (md5s) that ``dvc fetch --verbose`` downloaded, found corrupt and deleted.

    dvc's ``verify`` logs each at debug level; only those still absent from the cache count.
    """
    text = log_path.read_text(errors="replace")
    paths = dict.fromkeys(Path(match["path"]) for match in DISCARDED_LINE.finditer(text))
    return [path.parent.name + path.name for path in paths if not path.exists()]


def tracked_paths(root: Path, oids: Collection[str]) -> dict[str, list[str]]:
    """The files and folders tracked in the repository at ``root`` whose md5 is in ``oids``.

    Folders' listings are read from the local cache only; paths are relative to ``root``.
    """
    from dvc.repo import Repo

    found: dict[str, list[str]] = defaultdict(list)
    with Repo(str(root)) as repo:
        for out in repo.index.outs:
            if out.hash_info is None:
                continue
            path = os.path.relpath(out.fs_path, repo.root_dir)
            entries = [((), out.hash_info)]
            if out.hash_info.isdir and (tree := out.get_obj()) is not None:
                entries += [(key, hash_info) for key, _, hash_info in tree]
            for key, hash_info in entries:
                if hash_info is not None and hash_info.value in oids:
                    found[hash_info.value].append(os.path.join(path, *key))
    return found


def named_files(oids: Collection[str], paths: dict[str, list[str]]) -> list[str]:
    """``path (md5 …)`` for each of ``oids`` (``paths``: tracked paths by md5), sorted."""
    return sorted(
        f"{', '.join(paths.get(oid, [])) or 'an untracked object'} (md5 {oid})" for oid in oids
    )


def corrupt_download_error(remote_name: str, named: Sequence[str], log_path: Path) -> RemoteError:
    """The one line about discarded downloads: the first few ``named`` files, and where all are."""
    files = "1 downloaded file" if len(named) == 1 else f"{len(named)} downloaded files"
    shown = "; ".join(named[:SHOWN_FILES])
    if len(named) > SHOWN_FILES:
        shown += f" and {len(named) - SHOWN_FILES} more (all listed in {log_path})"
    return RemoteError(
        f"remote {remote_name!r}: {files} failed verification (md5 mismatch, verify = true), "
        f"so nothing was checked out and the workspace is unchanged: {shown}. The remote's "
        "copies are corrupt: see 'Corrupt files in the remote' in docs/gcs.md"
    )


def check_downloads(remote: Remote, log_path: Path) -> None:
    """Raise RemoteError naming the files whose downloads ``verify`` discarded (per ``log_path``)."""
    if oids := discarded_downloads(log_path):
        named = named_files(oids, tracked_paths(remote.dvc_dir.parent, oids))
        with log_path.open("a") as log_file:
            log_file.writelines(f"ser: discarded download of {name}\n" for name in named)
        raise corrupt_download_error(remote.name, named, log_path)


def fetch_verified(
    remote: Remote, targets: Sequence[str], env: dict[str, str], timeout: float, log_path: Path
) -> None:
    """``dvc fetch`` into the cache; RemoteError naming every download that ``verify`` discarded."""
    if not remote.verify:
        log.warning(
            "remote %r does not verify downloads, so a corrupt one would go unnoticed; "
            "turn it on: dvc remote modify --local %s verify true",
            remote.name,
            remote.name,
        )
    command = ["dvc", "fetch", "--verbose", "--remote", remote.name, *targets]
    try:
        run_dvc(command, env, timeout, log_path, quiet=True)  # --verbose logs to stdout
    except RemoteError:
        check_downloads(remote, log_path)  # corruption explains a failed fetch better than dvc
        raise
    check_downloads(remote, log_path)
    log.info("fetched from remote %r%s", remote.name, " (verified)" if remote.verify else "")


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 1.0)


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
    log_path = remote.dvc_dir / "tmp" / LOG_NAME
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    log.debug("dvc %s of %s (timeout %g s)", action, targets or "everything", seconds)
    if action == "pull":
        fetch_verified(remote, targets, env, _remaining(deadline), log_path)
        run_dvc(["dvc", "checkout", *targets], env, _remaining(deadline), log_path)
    else:
        command = ["dvc", *ACTIONS[action], "--remote", remote.name, *targets]
        run_dvc(command, env, _remaining(deadline), log_path)


def setup(
    url: str,
    name: str = DEFAULT_NAME,
    endpoint: str | None = None,
    anonymous: bool = False,
    credentials: Path | None = None,
    project: str | None = None,
) -> Path:
    """Make ``url`` (``gs://BUCKET/PATH``) the default DVC remote ``name`` of this clone.

    Written to ``.dvc/config.local`` (git-ignored: a bucket, an emulator's ``endpoint`` and a
    key file belong to one machine) with ``verify`` on, replacing a remote of that name.
    ``anonymous`` is for an emulator, which needs no Google credentials. Returns the file.
    """
    from dvc.config import Config, ConfigError

    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "gs" or not parts.netloc:
        raise RemoteError(
            f"{url!r} is not a Cloud Storage location gs://BUCKET/PATH (a folder remote: "
            "dvc remote add --local -d NAME PATH, docs/gcs.md)"
        )
    settings = {"url": url, "verify": "true"}
    optional = {
        "endpointurl": endpoint,
        "allow_anonymous_login": "true" if anonymous else None,
        "credentialpath": str(credentials.resolve()) if credentials else None,
        "projectname": project,
    }
    settings |= {key: value for key, value in optional.items() if value}
    try:
        config = Config.from_cwd()
        if config.dvc_dir is None:
            raise RemoteError(f"{Path.cwd()} is not inside a DVC repository")
        with config.edit("local") as local:
            local["remote"][name] = settings
            local.setdefault("core", {})["remote"] = name
    except ConfigError as error:
        raise RemoteError(f"DVC configuration: {error}") from None
    written = Path(config.files["local"])
    log.info("remote %r is %s (verified downloads), written to %s", name, url, written)
    return written
