"""The DVC remote: push, fresh clone, pull against a GCS emulator on 127.0.0.1, and failing safely."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, LoopbackServer, free_port, project_env, run, tree_digest

from ser.ops import remote
from ser.ops.remote import RemoteError

BUCKET = "ser-test"
PIPELINE_FOLDERS = ("data/raw", "data/processed", "tuning", "models", "reports")
# Files whose last bytes a multipart upload can lose, all stored correctly by the emulator;
# at 5 MiB gcsfs switches to a resumable upload, which keeps a trailing \r.
KEPT_ENDINGS = {
    "ends-lf.txt": b"a line\n",
    "ends-crlf.txt": b"a line\r\n",
    "ends-lf-lf.bin": b"\x00\n\n",
    "no-newline.bin": b"\x00\x01\x02",
    "empty.bin": b"",
    "5mib-ends-cr.bin": b"\x00" * (5 * 2**20 - 1) + b"\r",
}
ENDS_IN_CR = b"fLaC\x00\r"  # under 5 MiB: the emulator's multipart parser drops the \r


class Emulator:
    """``gcp-storage-emulator`` (the GCS JSON API) on 127.0.0.1, keeping its data on disk."""

    def __init__(self, data_dir: Path):
        self.port = free_port()
        self.data_dir = data_dir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gcp_storage_emulator",
                "-d",
                str(self.data_dir),
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--default-bucket",
                BUCKET,
                "-q",
            ],
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}", timeout=1).close()
                return
            except OSError:
                assert self.process.poll() is None, "the emulator exited"
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the emulator did not answer on {self.url}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def gcs_emulator(tmp_path: Path) -> Iterator[Emulator]:
    emulator = Emulator(tmp_path / "gcs")
    emulator.start()
    yield emulator
    emulator.stop()


def gcs_env(repo: Path) -> dict[str, str]:
    """The project environment without any GCS setting inherited from this machine."""
    env = project_env(repo)
    for name in (remote.EMULATOR_ENV, remote.GCSFS_PROBE_ENV, remote.TIMEOUT_ENV):
        env.pop(name, None)
    return env


def use_emulator(repo: Path, endpoint: str) -> None:
    """Make the emulator's bucket the clone's remote, as docs/gcs.md says."""
    ser_remote(repo, "setup", f"gs://{BUCKET}/dvcstore", "--endpoint", endpoint, "--anonymous")


def ser_remote(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["ser", "remote", *args], repo, env=gcs_env(repo), check=check)


def commit_data(repo: Path, folder: str, files: dict[str, bytes]) -> None:
    """Write ``files`` into ``folder``, track it with ``dvc add`` and commit."""
    for name, content in files.items():
        path = repo / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    run(["dvc", "add", "-q", folder], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", f"{folder}: {', '.join(files)}"], repo)


@pytest.mark.slow
def test_push_then_a_fresh_clone_pulls_everything_and_has_nothing_to_run(
    project_repo, gcs_emulator, tmp_path
):
    repo = project_repo({"model": {"kind": "logreg"}})  # every output, without a network to train
    use_emulator(repo, gcs_emulator.url)
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline run"], repo)

    before = ser_remote(repo, "status").stdout
    assert "new:" in before
    for output in (
        "data/raw",
        "data/processed/features.parquet",
        "tuning/study",
        "models/classifier.json",
        "data/processed/frames.npz",
    ):
        assert output in before
    assert "reports/" not in before  # git carries the reports
    pushed = ser_remote(repo, "push").stdout
    assert "files pushed" in pushed
    assert "in sync" in ser_remote(repo, "status").stdout

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / ".dvc" / "cache").exists()
    use_emulator(clone, gcs_emulator.url)
    env = gcs_env(clone) | {remote.GCSFS_PROBE_ENV: "false"}  # plain dvc, as docs/gcs.md says
    run(["dvc", "pull"], clone, env=env)
    for folder in PIPELINE_FOLDERS:
        expected = tree_digest(repo / folder)
        assert expected and tree_digest(clone / folder) == expected, folder
    assert "up to date" in run(["dvc", "status"], clone).stdout
    repro = run(["dvc", "repro"], clone).stdout
    assert "Running stage" not in repro and "up to date" in repro
    assert "in sync" in ser_remote(clone, "status").stdout


def test_pulls_are_byte_exact_and_a_corrupted_download_fails_naming_the_file(
    project_repo, gcs_emulator, tmp_path
):
    repo = project_repo()
    use_emulator(repo, gcs_emulator.url)
    commit_data(repo, "data/edge", KEPT_ENDINGS)
    ser_remote(repo, "push")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    use_emulator(clone, gcs_emulator.url)
    data = ("data/raw.dvc", "data/edge.dvc")  # the pipeline never ran here: no dvc.lock
    pulled = ser_remote(clone, "pull", *data)
    assert "fetched from remote 'gcs' (verified)" in pulled.stderr  # verify: set by setup
    for name, content in KEPT_ENDINGS.items():
        assert (clone / "data" / "edge" / name).read_bytes() == content, name
    assert tree_digest(clone / "data" / "raw") == tree_digest(repo / "data" / "raw")

    commit_data(repo, "data/edge", {"ends-cr.bin": ENDS_IN_CR})
    ser_remote(repo, "push")
    run(["git", "pull", "-q"], clone)
    workspace = tree_digest(clone / "data")
    result = ser_remote(clone, "pull", *data, check=False)
    oid = hashlib.md5(ENDS_IN_CR).hexdigest()
    assert result.returncode == 2, "the emulator kept the \\r: update docs/gcs.md and this test"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "1 downloaded file failed verification" in lines[0]
    assert f"data/edge/ends-cr.bin (md5 {oid})" in lines[0]
    assert tree_digest(clone / "data") == workspace
    assert not (clone / ".dvc" / "cache" / "files" / "md5" / oid[:2] / oid[2:]).exists()

    plain = run(
        ["dvc", "pull", *data],
        clone,
        env=gcs_env(clone) | {remote.GCSFS_PROBE_ENV: "false"},
        check=False,
    )
    assert plain.returncode != 0 and "Checkout failed" in plain.stderr, plain.stderr
    assert not (clone / "data" / "edge").exists()  # dvc removes an output it cannot complete


def test_a_corrupt_download_error_names_a_few_files_and_where_all_are_listed():
    oids = [f"{index:032x}" for index in range(7)]
    paths = {oid: [f"data/raw/clip{index}.flac"] for index, oid in enumerate(oids) if index}
    named = remote.named_files(oids, paths)
    assert named[0] == "an untracked object (md5 " + oids[0] + ")"
    assert named[1] == "data/raw/clip1.flac (md5 " + oids[1] + ")"
    message = str(remote.corrupt_download_error("gcs", named, Path(".dvc/tmp/ser-remote.log")))
    assert message.startswith("remote 'gcs': 7 downloaded files failed verification")
    assert "data/raw/clip4.flac" in message and "data/raw/clip5.flac" not in message
    assert "and 2 more (all listed in .dvc/tmp/ser-remote.log)" in message
    assert "\n" not in message
    assert "1 downloaded file failed" in str(
        remote.corrupt_download_error("gcs", named[:1], Path())
    )


def test_unreachable_remote_fails_fast_in_one_line_and_touches_nothing(project_repo, gcs_emulator):
    repo = project_repo()
    use_emulator(repo, gcs_emulator.url)
    gcs_emulator.stop()
    before = tree_digest(repo / ".dvc" / "cache"), tree_digest(repo / "data")
    for action in ("push", "pull", "status"):
        start = time.monotonic()
        result = ser_remote(repo, action, "--timeout", "60", check=False)
        assert time.monotonic() - start < 20
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "unreachable" in lines[0], result.stderr
    assert (tree_digest(repo / ".dvc" / "cache"), tree_digest(repo / "data")) == before

    gcs_emulator.start()
    assert "files pushed" in ser_remote(repo, "push").stdout
    assert "in sync" in ser_remote(repo, "status").stdout


def test_a_bucket_the_endpoint_lacks_is_named_in_one_line(project_repo, gcs_emulator):
    repo = project_repo()
    use_emulator(repo, gcs_emulator.url)
    run(["dvc", "remote", "add", "--local", "typo", "gs://no-such-bucket/dvcstore"], repo)
    run(["dvc", "remote", "modify", "--local", "typo", "endpointurl", gcs_emulator.url], repo)
    result = ser_remote(repo, "push", "-r", "typo", check=False)
    assert result.returncode == 2
    assert "bucket 'no-such-bucket' not found" in result.stderr.strip().splitlines()[-1]


class StallingGCS(LoopbackServer):
    """Answers the bucket probe like GCS, then never answers dvc's own requests."""

    def __init__(self) -> None:
        super().__init__(StallingHandler)
        self.release = threading.Event()


class StallingHandler(http.server.BaseHTTPRequestHandler):
    server: StallingGCS

    def do_GET(self) -> None:
        if self.path == f"/storage/v1/b/{BUCKET}?fields=name":
            body = f'{{"name": "{BUCKET}"}}'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.server.release.wait(120)

    do_POST = do_PUT = do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stalling_gcs() -> Iterator[StallingGCS]:
    with StallingGCS() as server:
        yield server
        server.release.set()


def test_a_remote_that_never_answers_is_stopped_at_the_timeout(project_repo, stalling_gcs):
    repo = project_repo()
    use_emulator(repo, stalling_gcs.url)
    before = tree_digest(repo / ".dvc" / "cache"), tree_digest(repo / "data")
    start = time.monotonic()
    result = ser_remote(repo, "push", "--timeout", "6", check=False)
    elapsed = time.monotonic() - start
    assert result.returncode == 2
    assert 6 <= elapsed < 6 + remote.INTERRUPT_GRACE_S + 10
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not finish in time" in lines[0], result.stderr
    assert (tree_digest(repo / ".dvc" / "cache"), tree_digest(repo / "data")) == before
    assert "up to date" in run(["dvc", "status", "data/raw.dvc"], repo).stdout  # not locked


def test_a_local_folder_remote_round_trips_without_a_server(project_repo, tmp_path):
    repo = project_repo()
    store = tmp_path / "dvcstore"
    run(["dvc", "remote", "add", "--local", "-d", "offline", str(store)], repo)
    assert "files pushed" in ser_remote(repo, "push").stdout
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "remote", "add", "--local", "-d", "offline", str(store)], clone)
    ser_remote(clone, "pull", "data/raw.dvc")  # the pipeline never ran here: no dvc.lock
    assert tree_digest(clone / "data" / "raw") == tree_digest(repo / "data" / "raw")


def test_the_gcs_probe_is_turned_off_only_for_an_emulator():
    real = remote.Remote("gcs", "gs://b/dvcstore", None, Path(".dvc"))
    emulated = remote.Remote("gcs", "gs://b/dvcstore", "http://127.0.0.1:9023", Path(".dvc"))
    assert remote.GCSFS_PROBE_ENV not in remote.remote_env(real, {})
    assert remote.remote_env(emulated, {})[remote.GCSFS_PROBE_ENV] == "false"
    via_env = remote.remote_env(real, {remote.EMULATOR_ENV: "127.0.0.1:9023"})
    assert via_env[remote.GCSFS_PROBE_ENV] == "false"
    explicit = {remote.GCSFS_PROBE_ENV: "true"}
    assert remote.remote_env(emulated, explicit)[remote.GCSFS_PROBE_ENV] == "true"
    assert remote.gcs_endpoint(real, {remote.EMULATOR_ENV: "127.0.0.1:9023"}) == (
        "http://127.0.0.1:9023"
    )
    assert remote.gcs_endpoint(real, {}) == remote.GCS_ENDPOINT


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        (None, {}, remote.DEFAULT_TIMEOUT_S),
        (None, {remote.TIMEOUT_ENV: "42"}, 42.0),
        (5.0, {remote.TIMEOUT_ENV: "42"}, 5.0),
        (None, {remote.TIMEOUT_ENV: "soon"}, RemoteError),
        (0.0, {}, RemoteError),
    ],
)
def test_timeout_comes_from_the_flag_then_the_environment(flag, environ, expected):
    if expected is RemoteError:
        with pytest.raises(RemoteError):
            remote.resolve_timeout(flag, environ)
    else:
        assert remote.resolve_timeout(flag, environ) == expected


def test_the_committed_config_names_no_remote_for_a_fresh_clone_to_reach():
    from dvc.config import Config

    committed = Config(dvc_dir=str(PROJECT_ROOT / ".dvc"), validate=True).load_one("repo")
    assert committed["remote"] == {}
    assert "remote" not in committed.get("core", {})


def test_setup_makes_the_bucket_the_default_remote_of_this_clone_only(tmp_path, monkeypatch):
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    monkeypatch.chdir(tmp_path)
    key = tmp_path / "key.json"
    written = remote.setup("gs://team-bucket/ser/dvcstore", credentials=key, project="p1")
    assert written == tmp_path / ".dvc" / "config.local"
    configured = remote.resolve_remote()
    assert configured == remote.Remote(
        "gcs", "gs://team-bucket/ser/dvcstore", None, tmp_path / ".dvc", verify=True
    )
    listed = run(["dvc", "config", "--list", "--show-origin"], tmp_path).stdout
    assert f"{Path('.dvc/config.local')}\tremote.gcs.credentialpath={key}" in listed
    assert "remote.gcs.projectname=p1" in listed
    assert "remote" not in (tmp_path / ".dvc" / "config").read_text()  # nothing to commit
    assert run(["git", "check-ignore", "-q", str(written)], tmp_path, check=False).returncode == 0

    remote.setup("gs://other/dvcstore", endpoint="http://127.0.0.1:9023", anonymous=True)
    replaced = remote.resolve_remote()
    assert (replaced.url, replaced.endpoint) == ("gs://other/dvcstore", "http://127.0.0.1:9023")
    assert "credentialpath" not in run(["dvc", "config", "--list"], tmp_path).stdout


@pytest.mark.parametrize("url", ["/mnt/share/dvcstore", "s3://bucket/dvcstore", "gs:///dvcstore"])
def test_setup_takes_only_a_cloud_storage_location(tmp_path, monkeypatch, url):
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RemoteError, match=r"is not a Cloud Storage location gs://BUCKET/PATH"):
        remote.setup(url)
    assert not (tmp_path / ".dvc" / "config.local").exists()
