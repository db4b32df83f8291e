"""Bringing a corpus into data/raw: from a folder, and from a zip URL served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, LoopbackServer, free_port, tree_digest, write_ravdess_corpus

from ser.cli import main
from ser.corpus import fetch
from ser.corpus.fetch import DataError, fetch_corpus, install_folder


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Seven tiny RAVDESS clips of one speaker, plus a file that is not part of a corpus."""
    root = tmp_path / "corpus"
    write_ravdess_corpus(root, actors=1, takes=1)
    (root / "README.txt").write_text("not audio")
    return root


def test_install_folder_copies_audio_then_finds_it_present(corpus, tmp_path):
    destination = tmp_path / "raw" / "ravdess"
    assert install_folder(corpus, destination) == (7, 0)
    assert install_folder(corpus, destination) == (0, 7)
    installed = tree_digest(destination)
    assert installed == {k: v for k, v in tree_digest(corpus).items() if k != "README.txt"}


def test_install_folder_refuses_a_differing_file_and_copies_nothing(corpus, tmp_path):
    destination = tmp_path / "raw" / "ravdess"
    install_folder(corpus, destination)
    changed = next(destination.rglob("*.flac"))
    changed.write_bytes(b"edited by hand")
    (corpus / "Actor_01" / "03-01-01-01-02-02-01.flac").write_bytes(b"a new clip")
    before = tree_digest(destination)
    with pytest.raises(DataError, match=r"1 file\(s\) .* differ .* nothing was copied"):
        install_folder(corpus, destination)
    assert tree_digest(destination) == before


@pytest.mark.parametrize(
    ("make_source", "message"),
    [
        (lambda tmp: tmp / "missing", "not found"),
        (lambda tmp: tmp, "no audio files"),
    ],
)
def test_install_folder_rejects_a_source_without_audio(tmp_path, make_source, message):
    with pytest.raises(DataError, match=message):
        install_folder(make_source(tmp_path), tmp_path / "raw" / "x")
    assert not (tmp_path / "raw").exists()


GARBAGE = b"this is not a zip file" * 100


def zip_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            bundle.write(path, path.relative_to(folder))
    return buffer.getvalue()


class ArchiveServer(LoopbackServer):
    """Serves ``/corpus.zip``, ``/truncated.zip`` (half of it, full length announced),
    ``/garbage.zip`` (not a zip); anything else is 404. Counts requests, and records
    the content of the folder ``watch`` (when set) as each request arrives."""

    def __init__(self, archive: bytes):
        super().__init__(ArchiveHandler)
        self.archive = archive
        self.requests = 0
        self.watch: Path | None = None
        self.seen: list[dict[str, str]] = []


class ArchiveHandler(http.server.BaseHTTPRequestHandler):
    server: ArchiveServer

    def do_GET(self) -> None:
        self.server.requests += 1
        if self.server.watch is not None:
            self.server.seen.append(tree_digest(self.server.watch))
        archive = self.server.archive
        bodies = {
            "/corpus.zip": (archive, len(archive)),
            "/truncated.zip": (archive[: len(archive) // 2], len(archive)),
            "/garbage.zip": (GARBAGE, len(GARBAGE)),
        }
        if self.path not in bodies:
            self.send_error(404)
            return
        body, announced = bodies[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def archive_server(corpus: Path) -> Iterator[ArchiveServer]:
    with ArchiveServer(zip_of(corpus)) as server:
        yield server


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A data/ folder with a corpus already in data/raw, as a working repository has."""
    root = tmp_path / "project"
    (root / "data" / "raw" / "crema_d").mkdir(parents=True)
    (root / "data" / "raw" / "crema_d" / "1001_DFA_ANG_XX.wav").write_bytes(b"RIFF....")
    return root


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def test_fetch_from_url_installs_the_verified_archive(archive_server, project, corpus):
    raw = project / "data" / "raw"
    archive_server.watch = raw
    before = tree_digest(raw)
    checksum = sha256(archive_server.archive)
    destination = fetch_corpus(f"{archive_server.url}/corpus.zip", raw, "ravdess", checksum)
    assert archive_server.seen == [before]  # nothing in data/raw while downloading
    assert tree_digest(destination) == {
        k: v for k, v in tree_digest(corpus).items() if k != "README.txt"
    }
    assert [p.name for p in (project / "data").iterdir()] == ["raw"]  # no scratch left behind


def test_fetch_from_url_uses_the_publisher_checksum_for_a_known_url(
    archive_server, project, monkeypatch
):
    url = f"{archive_server.url}/corpus.zip"
    md5 = hashlib.md5(archive_server.archive).hexdigest()
    monkeypatch.setitem(fetch.PUBLISHED_CHECKSUMS, url, fetch.Checksum("md5", md5))
    destination = fetch_corpus(url, project / "data" / "raw", "ravdess")
    assert len(list(destination.rglob("*.flac"))) == 7


@pytest.mark.parametrize(
    ("path", "checksum", "message"),
    [
        ("/corpus.zip", "0" * 64, "sha256 mismatch"),
        ("/truncated.zip", None, "truncated"),
        ("/garbage.zip", None, "not a valid zip"),
        ("/missing.zip", None, "download failed .*404"),
        ("server down", None, "download failed .*refused"),
    ],
)
def test_failed_download_leaves_data_raw_untouched(
    archive_server, project, path, checksum, message
):
    if path == "server down":
        url = f"http://127.0.0.1:{free_port()}/corpus.zip"
    else:
        url = f"{archive_server.url}{path}"
    # the right checksum of what the server sends, so that only the failure under test fails
    checksum = checksum or sha256(GARBAGE if path == "/garbage.zip" else archive_server.archive)
    before = tree_digest(project)
    with pytest.raises(DataError, match=message):
        fetch_corpus(url, project / "data" / "raw", "ravdess", checksum)
    assert tree_digest(project) == before


def test_url_without_a_known_checksum_is_refused_before_downloading(archive_server, project):
    with pytest.raises(DataError, match="no checksum"):
        fetch_corpus(f"{archive_server.url}/corpus.zip", project / "data" / "raw", "ravdess")
    with pytest.raises(DataError, match="64 hexadecimal digits"):
        fetch_corpus(f"{archive_server.url}/corpus.zip", project / "data" / "raw", "x", "abc")
    assert archive_server.requests == 0


def test_ser_data_reports_a_failed_download_in_one_line(
    archive_server, project, monkeypatch, caplog
):
    monkeypatch.chdir(project)
    params = PROJECT_ROOT / "params.yaml"
    url = f"{archive_server.url}/corpus.zip"
    code = main(["--params", str(params), "data", "--source", url, "--sha256", "f" * 64])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "mismatch" in errors[0] and "\n" not in errors[0]
    assert not (project / "data" / "raw" / "ravdess").exists()
