"""Serving figures (``make benchmark-serving``): ``mlflow models serve`` under load on loopback.

The model is ``models/`` of the workspace (``--model-dir``), logged and registered with
alias ``champion`` in a throw-away MLflow store so that the server loads it exactly as
it loads a promoted version, or any MLflow model URI (``--model-uri
models:/ser-emotion@champion``, from ``MLFLOW_TRACKING_URI`` or the workspace's store).
``mlflow models serve --env-manager local`` serves it on 127.0.0.1; then ``--clients``
concurrent clients send ``--requests`` single-clip requests in all, real clips of the
shared RAVDESS in turn (generated tones, with a note, when it is absent). Prints p50 /
p95 latency per request, clips/s and the machine's load, and writes ``--out`` (.md and
.json), keeping the rows of earlier runs with other settings (model, workers, clients,
requests, clips), so that a table of several settings is measured one run at a time. The
clients share the machine with the server: on 2 cores they cost it some CPU.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from pipeline_speed import SHARED_RAVDESS, machine

from ser.config import load_params
from ser.ops.atomic import read_json, write_json, write_with
from ser.ops.tracking import tracking_uri
from ser.serve.mlflow_model import AUDIO_COLUMN, example_clip, log_model
from ser.serve.registry import CHAMPION

log = logging.getLogger("benchmark")

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 300.0
"""Seconds the server may take to answer /ping: TensorFlow's import and the model's load,
slow on a busy machine."""
DISTINCT_CLIPS = 50
"""Real clips sent in turn, spread over the corpus's speakers."""
TONE_RATE = 16_000


class ScoringServer:
    """``mlflow models serve -m <model_uri> --env-manager local`` on a free port of 127.0.0.1.

    ``with ScoringServer(...) as server:`` starts it in its own process group, returns once
    ``GET /ping`` answers (or raises with the end of its log) and kills the group on exit.
    """

    def __init__(self, model_uri: str, store_uri: str, log_path: Path, workers: int = 1) -> None:
        self.model_uri, self.store_uri, self.log_path = model_uri, store_uri, log_path
        self.workers = workers
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.start_seconds = float("nan")

    def __enter__(self) -> ScoringServer:
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            self.model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-w",
            str(self.workers),
        ]
        # the server runs `uvicorn` from PATH: the one installed beside this Python
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = dict(
            os.environ, MLFLOW_TRACKING_URI=self.store_uri, TF_CPP_MIN_LOG_LEVEL="3", PATH=path
        )
        started = time.perf_counter()
        with self.log_path.open("w") as sink:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.wait_until_up(started + START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - started
        log.info("%s serves %s (up in %.1f s)", self.url, self.model_uri, self.start_seconds)
        return self

    def wait_until_up(self, deadline: float) -> None:
        while time.perf_counter() < deadline:
            if not self.alive():
                raise RuntimeError(f"the scoring server exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(
            f"no answer on {self.url}/ping in {START_TIMEOUT:g} s:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM to the process group (the CLI and the uvicorn it runs), SIGKILL if it lingers."""
        if self.process is None:
            return
        for sent in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sent)
                self.process.wait(timeout=15)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def register_champion(models_dir: Path, store_uri: str, artifacts: Path, name: str) -> str:
    """Log ``models_dir`` as an MLflow Model in the store ``store_uri`` (artifacts under
    ``artifacts``), register it as a version of ``name`` with alias ``champion`` and return
    ``models:/<name>@champion``. The process's tracking URI is left as it was."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("serving", artifact_location=artifacts.as_uri())
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(store_uri)
    try:
        with mlflow.start_run(experiment_id=experiment):
            info = log_model(models_dir, registered_model=name)
    finally:
        mlflow.set_tracking_uri(previous)  # None also clears the variable it exported
    client.set_registered_model_alias(name, CHAMPION, info.registered_model_version)
    return f"models:/{name}@{CHAMPION}"


def invocation(clips: list[bytes]) -> bytes:
    """A ``POST /invocations`` body: one ``dataframe_records`` row per clip, base64 in JSON."""
    rows = [{AUDIO_COLUMN: base64.b64encode(clip).decode("ascii")} for clip in clips]
    return json.dumps({"dataframe_records": rows}).encode()


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    """Status and text of the server's answer to ``body`` sent to ``<url>/invocations``."""
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def load_clips(corpus: Path) -> tuple[list[bytes], str]:
    """Up to DISTINCT_CLIPS files of ``corpus`` spread over its speakers, or generated tones
    when it has none; and what they are."""
    files = sorted(corpus.glob("Actor_*/*.flac"))
    if not files:
        log.warning("no clips in %s: sending generated 1-2 s tones instead of speech", corpus)
        tones = [example_clip(TONE_RATE, 1 + i / DISTINCT_CLIPS) for i in range(DISTINCT_CLIPS)]
        return tones, "generated tones of 1-2 s (no corpus found)"
    chosen = files[:: max(1, len(files) // DISTINCT_CLIPS)][:DISTINCT_CLIPS]
    return [path.read_bytes() for path in chosen], f"{len(chosen)} clips of {corpus}"


def measure_load(url: str, bodies: list[bytes], clients: int, requests: int) -> dict[str, float]:
    """Send ``requests`` requests (``bodies`` in turn) from ``clients`` concurrent clients;
    latency percentiles (ms) and requests/s. Raise RuntimeError on any answer but 200."""

    def timed(index: int) -> tuple[float, int, str]:
        started = time.perf_counter()
        status, text = post(url, bodies[index % len(bodies)])
        return 1000 * (time.perf_counter() - started), status, text

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(timed, range(requests)))
    seconds = time.perf_counter() - started
    failed = [(status, text) for _, status, text in answers if status != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} of {requests} requests failed; first: {failed[0]}")
    latencies = np.array([ms for ms, _, _ in answers])
    return {
        "requests": requests,
        "clients": clients,
        "seconds": seconds,
        "requests_per_s": requests / seconds,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "max_ms": float(latencies.max()),
    }


SETTINGS = ("model", "workers", "clients", "requests", "clips")
"""What a row was measured with: a new run replaces the row of the same settings."""


def kept_rows(earlier: list[dict], row: dict) -> list[dict]:
    """``earlier`` rows (``{"machine": …, "result": …}``) measured with other settings, and ``row``,
    ordered by server workers then clients."""
    rows = [r for r in earlier if any(r["result"][k] != row["result"][k] for k in SETTINGS)]
    return sorted([*rows, row], key=lambda r: (r["result"]["workers"], r["result"]["clients"]))


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | server workers | clients | requests | p50 latency | p95 latency | clips/s "
        "| server start | load average |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        result, machine = row["result"], row["machine"]
        load = f"{machine['load_average_start'][0]} to {machine['load_average_end'][0]}"
        lines.append(
            f"| {result['model']} | {result['workers']} | {result['clients']} "
            f"| {result['requests']} | {result['p50_ms']:.0f} ms | {result['p95_ms']:.0f} ms "
            f"| {result['requests_per_s']:.1f} | {result['server_start_s']:.0f} s | {load} |"
        )
    lines += ["", "One clip a request. Each row, the clips and the machine it was measured on:", ""]
    lines += [
        f"- {r['result']['workers']} worker(s), {r['result']['clients']} client(s): "
        f"{r['result']['clips']}; " + ", ".join(f"{k}: {v}" for k, v in r["machine"].items())
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def write_results(row: dict, out: Path) -> str:
    """``out``.json with ``row`` among the kept rows of the earlier file, and ``out``.md."""
    path = out.with_suffix(".json")
    earlier = read_json(path).get("rows", []) if path.is_file() else []
    rows = kept_rows(earlier, row)
    text = markdown(rows)
    write_json(path, {"rows": rows})
    write_with(out.with_suffix(".md"), lambda target: target.write_text(text))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", type=Path, default=ROOT / "models", help="a models/ folder")
    source.add_argument(
        "--model-uri", help="an MLflow model URI, e.g. models:/ser-emotion@champion"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=1, help="server processes (serve -w)")
    parser.add_argument("--requests", type=int, default=200, help="requests in all, one clip each")
    parser.add_argument("--corpus", type=Path, default=SHARED_RAVDESS, help="RAVDESS folder")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "serving",
        help="writes <out>.md and <out>.json",
    )
    args = parser.parse_args(argv)
    if min(args.clients, args.requests, args.workers) < 1:
        parser.error("--clients, --requests and --workers must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    info = machine()

    with tempfile.TemporaryDirectory(prefix="ser-serving-") as scratch:
        scratch = Path(scratch)
        if args.model_uri:
            model, store_uri, label = args.model_uri, tracking_uri(), args.model_uri
        else:
            config = args.model_dir / "classifier.json"
            if not config.is_file():
                parser.error(f"{config} is missing: train a model or pass --model-uri")
            store_uri = f"sqlite:///{scratch / 'mlflow.db'}"
            name = load_params(ROOT / "params.yaml").mlflow.registered_model
            model = register_champion(args.model_dir, store_uri, scratch / "mlartifacts", name)
            label = f"{args.model_dir} ({read_json(config)['kind']})"
        clips, about_clips = load_clips(args.corpus)
        bodies = [invocation([clip]) for clip in clips]
        with ScoringServer(model, store_uri, scratch / "server.log", args.workers) as server:
            # untimed warm-up: a worker's first calls build the network's function
            measure_load(server.url, bodies, args.workers, 4 * args.workers)
            log.info("%d requests from %d clients", args.requests, args.clients)
            result = measure_load(server.url, bodies, args.clients, args.requests)
        result |= {
            "model": label,
            "workers": args.workers,
            "clips": about_clips,
            "server_start_s": server.start_seconds,
        }

    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    print("\n" + write_results({"machine": info, "result": result}, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
