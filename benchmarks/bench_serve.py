"""Serving (issues 23 and 34): `bigtransfer serve` on an exported BiT-R50x1 — throughput and latency with dynamic
batching against one image per forward pass, a race against the servers users would pick instead (LitServe,
KServe's Python ModelServer, BentoML), and a soak with bad inputs mixed in.

    python benchmarks/bench_serve.py            # R50x1 at 224 px, 2 rounds per configuration, 10,000-request soak
    python benchmarks/bench_serve.py --quick    # a tiny model at 64 px, 1 round, 1,000-request soak: to try it
    python benchmarks/bench_serve.py --setup-peers      # only make the peers' venvs (the race makes missing ones)
    python benchmarks/bench_serve.py --skip throughput soak --peers litserve,bentoml   # the race alone, two peers

1. The model. BiT-R50x1 (BitConfig's defaults), 1000 classes, random weights (the library's initialisation: the
   hubs are out of reach here, and the weights' values do not change the work of a float32 forward pass), with
   BiT's 224-px evaluation preprocessing (`eval_processor(224)`) saved beside it, exported by `bigtransfer export`
   to ONNX float32. Timed alone first (a fresh process, no server): decoding + preprocessing of one photo, and the
   ONNX Runtime forward pass per image at batch 1, 8, 16 and 32 — what batching can gain on this CPU at most.
2. The photos. scikit-image's photos, centre-cropped to a square and resized to 224×224, JPEG q90.
3. Throughput and latency. `python -m bigtransfer serve EXPORT --port P` in a subprocess, twice per round: with
   dynamic batching (--max-delay-ms 10, and a --max-batch-size chosen from 1.: the largest batch whose forward
   pass per image is within 5 % of the best, the same cap for every batching server of the race; 32 without 1.)
   and unbatched (--max-batch-size 1), the
   order alternating between rounds, a fresh server each time. After a warm-up, asyncio clients (a minimal
   HTTP/1.1 client, one keep-alive connection each: httpx.AsyncClient spent ~9 ms of CPU per request at 32
   clients and stalled, this one ~0.4 ms) POST the photos to /predict: 1, 8 and 32 concurrent clients, a fixed
   number of requests per level. Requests/s, p50/p99 of the client-side latency, errors (anything but 200), the
   client's and the server's CPU time (its whole process tree), the other processes' (from /proc/stat: the noise
   check; NOISY is printed beyond 10 % of a core), and from /metrics the mean batch and the forward pass's time
   per image. Medians over rounds; ratios batched ÷ unbatched.
4. Soak. A tiny model (the tests' TINY config at 64 px: 10,000 requests in minutes), the server started with
   --max-body-bytes 1000000, 8 clients, 10,000 requests of which 10 % (seeded positions) are bad: random bytes,
   a 70-byte PNG declaring 30000×30000 pixels, 1.5 MB bodies, and photos cut short. Every bad one must get its
   4xx (400; 413 for the large body), every good one 200; the server must stay up; its RSS after the first 500
   requests against the end must grow ≤ 10 %; SIGTERM must end it with exit status 0. (--soak-protocol: REST;
   gRPC joins SOAK_DRIVERS once serve has --grpc-port.)
5. The race. The same export, photos, client and levels, each server fresh per round, the order reversed every
   other round: bigtransfer batched, answering KServe v2 JSON on /v2/models/bit/infer (the photo as a base64 BYTES
   `image`, the top 5 by the classification extension), against each peer written as its docs show
   (benchmarks/peers/NAME_server.py), in its own venv (PEER_CACHE/NAME, pinned by benchmarks/peers/NAME.txt),
   with its own batching: LitServe's max_batch_size/batch_timeout (POST /predict {"image": base64}), BentoML's
   @bentoml.api(batchable=True) (POST /classify {"images": [base64]}), and KServe's ModelServer unbatched (it has
   no batching in the process: KServe batches in a separate agent in Kubernetes), taking the same v2 body as
   bigtransfer. Every peer decodes with PIL and preprocesses with NumPy as the export's preprocessor_config.json
   says (peers/peer_model.py, which never imports bigtransfer), runs ONNX Runtime with ORT_THREADS threads,
   sequential execution, every graph optimisation and ORT_ALLOW_SPINNING, and answers the top 5 with scores.
   Each server's best label for every photo is checked against bigtransfer's. Reported: the levels as in 3 (the
   peers' mean batch from their own log of forward passes), bigtransfer ÷ each peer and ÷ the best peer, p99
   against the best peer's, and serving overhead: throughput ÷ the model alone's images/s (1.) at the timed batch
   size nearest the mean batch the server reached.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_data import cpu_description
from helpers import TINY, png_header

FULL = dict(model="R50x1", size=224, rounds=2, requests={1: 50, 8: 200, 32: 256}, warmup=(8, 64), alone_rounds=3,
            soak_requests=10_000)  # fmt: skip
QUICK = dict(model="tiny", size=64, rounds=1, requests={1: 20, 8: 80, 32: 96}, warmup=(8, 64), alone_rounds=2,
             soak_requests=1000)  # fmt: skip
# the soak's model (and --quick's): TINY at 64 px, so that 10,000 requests take minutes
TINY_SIZE = 64
CLASSES = 1000
BATCHES = (1, 8, 16, 32)  # the forward pass alone (16: where 32 clients settle in two cohorts)
BATCH_TOLERANCE = 0.05  # a batch size is as good as the best when its forward pass per image is within this
PHOTO_SIZE = 224
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry",
          "retina", "colorwheel", "camera", "coins", "brick")  # fmt: skip
SOAK = dict(clients=8, bad_fraction=0.1, max_body_bytes=1_000_000, large_body_bytes=1_500_000, warmup=500,
            rss_every=1000, seed=0)  # fmt: skip
BAD_KINDS = ("garbage", "bomb", "too_large", "truncated")
EXPECTED = {"good": 200, "garbage": 400, "bomb": 400, "too_large": 413, "truncated": 400}
REQUEST_TIMEOUT_S = 120
NOISY_OTHER_CPU_PCT = 10  # other processes' CPU during a level beyond which the figures are not comparable
GOALS = dict(throughput_ratio_at_32=1.5, p99_over_p50_at_8=2.0)
# the race against the peers (issue 34): every peer runs the export with these ONNX Runtime session options
# (peers/peer_model.py), the ones `bigtransfer serve` uses: one intra-op thread per core, sequential execution,
# every graph optimisation, and intra-op spinning as serve sets it
ORT_ALLOW_SPINNING = "0"  # session.intra_op.allow_spinning
ORT_THREADS = os.cpu_count()
PEERS_DIR = Path(__file__).resolve().parent / "peers"  # each peer's server program and pinned requirements
PEER_CACHE = Path(os.environ.get("BIGTRANSFER_BENCH_CACHE", Path.home() / ".cache" / "bigtransfer-bench")) / "peers"
RACE_MODEL_NAME = "bit"  # /v2/models/bit for bigtransfer and KServe
TOP_K = 5  # every server answers the top 5 labels with their scores
RACE_GOALS = dict(over_best_peer=1.0, serving_overhead=0.9)


# -- the model and the photos ---------------------------------------------------------------------------------------


def make_export(work: Path, kind: str, size: int) -> tuple[Path, dict]:
    """A random-weight classifier with its evaluation preprocessing, exported by `bigtransfer export` (ONNX)."""
    import torch

    from bigtransfer import BitConfig, BitForImageClassification
    from bigtransfer.train.augment import eval_processor

    torch.manual_seed(0)
    config = BitConfig(num_labels=CLASSES) if kind == "R50x1" else BitConfig(**{**TINY, "num_labels": CLASSES})
    model_dir, export_dir = work / f"{kind}-model", work / f"{kind}-export"
    BitForImageClassification(config).save_pretrained(model_dir)
    eval_processor(size).save_pretrained(model_dir)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bigtransfer", "export", str(model_dir), str(export_dir)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"bigtransfer export failed:\n{done.stderr[-3000:]}")
    onnx_bytes = sum(path.stat().st_size for path in export_dir.glob("*.onnx*"))
    return export_dir, {"model": kind, "input_px": size, "export_s": round(time.perf_counter() - began, 1),
                        "onnx_mb": round(onnx_bytes / 1e6, 1)}  # fmt: skip


def photo_jpegs() -> list[bytes]:
    """scikit-image's photos, centre-cropped square, resized to 224×224, JPEG q90."""
    from skimage import data

    jpegs = []
    for name in PHOTOS:
        pixels = getattr(data, name)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels
        image = Image.fromarray(pixels).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize(
            (PHOTO_SIZE, PHOTO_SIZE), Image.Resampling.LANCZOS
        )
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


# -- CPU time: the noise check (other processes on these cores) --------------------------------------------------------


def machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (every process, all cores), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user … steal; guest time is inside user


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- 1. the model alone ---------------------------------------------------------------------------------------------


def measure_model(export_dir: str, rounds: int) -> dict:
    """In a fresh process: ms to decode and preprocess one photo, and ms per image of the forward pass at each batch
    size (batches alternating within a round, median over rounds), through the server's own ServedModel."""
    from bigtransfer.serve.model import ServedModel

    served = ServedModel(export_dir, "cpu")
    jpegs = photo_jpegs()
    began = time.perf_counter()
    pixels = [served.pixels(jpeg) for jpeg in jpegs * 4]
    decode_ms = (time.perf_counter() - began) * 1000 / len(pixels)
    batches = {size: np.stack([pixels[i % len(pixels)] for i in range(size)]) for size in BATCHES}
    for batch in batches.values():
        served.logits(batch)  # untimed: the first call of each shape allocates
    times: dict[int, list[float]] = {size: [] for size in BATCHES}
    for _ in range(rounds):
        for size, batch in batches.items():
            calls = max(1, 8 // size)
            began = time.perf_counter()
            for _ in range(calls):
                served.logits(batch)
            times[size].append((time.perf_counter() - began) * 1000 / calls / size)
    return {"decode_preprocess_ms_per_image": round(decode_ms, 2),
            "forward_ms_per_image": {size: round(statistics.median(t), 2) for size, t in times.items()},
            "forward_ms_per_image_rounds": {size: [round(x, 2) for x in t] for size, t in times.items()}}  # fmt: skip


def model_alone(export_dir: Path, rounds: int) -> dict:
    machine, children, began = machine_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--measure-model", str(export_dir), "--alone-rounds", str(rounds)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"measuring the model failed:\n{done.stderr[-3000:]}")
    others = machine_cpu_seconds() - machine - (children_cpu_seconds() - children)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    measured["other_cpu_pct"] = round(100 * max(0.0, others) / (time.perf_counter() - began), 1)
    measured["forward_ms_per_image"] = {int(k): v for k, v in measured["forward_ms_per_image"].items()}
    return measured


# -- the server -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    process: subprocess.Popen
    url: str
    metrics_path: str | None = "/metrics"  # bigtransfer's Prometheus samples; a peer has none
    batch_log: Path | None = None  # a peer's: one line per forward pass, its batch size (peers/peer_model.py)
    exit_code: int | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and every process below it (LitServe, KServe and BentoML serve
        from child processes), with that of its children already ended."""
        return sum(process_cpu_seconds(pid) for pid in process_tree(self.process.pid))

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples, by name with labels: {'bigtransfer_batch_images_sum': …, …}."""
        if self.metrics_path is None:
            return {}
        text = httpx.get(f"{self.url}{self.metrics_path}", timeout=30).text
        return {match[1]: float(match[2]) for match in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}

    def batch_sizes(self) -> list[int]:
        """A peer's forward passes so far, by batch size."""
        if self.batch_log is None or not self.batch_log.exists():
            return []
        return [int(line) for line in self.batch_log.read_text().split()]


def process_tree(root: int) -> list[int]:
    """`root` and every live process below it, from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    tree, index = [root], 0
    while index < len(tree):
        tree += parents.get(tree[index], [])
        index += 1
    return tree


def process_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of one process (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(export_dir: Path, options: list[str], log: Path) -> Iterator[Server]:
    """`python -m bigtransfer serve` on a free port, its log in `log`; stopped with SIGTERM (exit status kept)."""
    port = free_port()
    command = [sys.executable, "-m", "bigtransfer", "serve", str(export_dir), "--port", str(port), *options]
    with started(command, port, log, "/v2/health/ready") as server:
        yield server


@contextlib.contextmanager
def started(command: list[str], port: int, log: Path, ready_path: str, env: dict | None = None,
            cwd: Path | None = None, whole_group: bool = False, **fields) -> Iterator[Server]:  # fmt: skip
    """`command` (a server listening on `port`), its output in `log`, ready once GET `ready_path` answers 200;
    stopped with SIGTERM, to the process alone or to its whole process group (`whole_group`: a peer's workers)."""
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=whole_group)  # fmt: skip
    server = Server(process, f"http://127.0.0.1:{port}", **fields)

    def stop(signal_number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal_number) if whole_group else process.send_signal(signal_number)

    try:
        deadline = time.monotonic() + 180
        while True:
            if not server.alive:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready in 180 s:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}{ready_path}", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield server
    finally:
        if server.alive:
            stop(signal.SIGTERM)
        try:
            server.exit_code = process.wait(60)
        except subprocess.TimeoutExpired:
            stop(signal.SIGKILL)
            server.exit_code = process.wait()
        if whole_group:
            stop(signal.SIGKILL)  # workers left behind by a peer's main process


# -- the clients ----------------------------------------------------------------------------------------------------


class Connection:
    """One client's keep-alive HTTP/1.1 connection, written by hand on asyncio streams: it spends ~0.4 ms of CPU
    per request, where httpx.AsyncClient spent ~9 ms at 32 clients on these cores (and stalled: p99 of seconds)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> int:
        """POST `body` to `path`; the response's status (its body read and dropped)."""
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        writer.write(f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: {content_type}\r\n"
                     f"content-length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        status_line, *header_lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
        await reader.readexactly(int(headers["content-length"]))
        if headers.get("connection") == "close":
            self.close()
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def _drive(url: str, bodies: list[bytes], clients: int, content_type: str) -> list[tuple[float, int, str]]:
    """POST every body once, `clients` at a time (each client the next body as soon as its answer is in):
    (seconds, HTTP status or 0 for a transport error, error type) per body, in order."""
    parts = urllib.parse.urlsplit(url)
    results: list[tuple[float, int, str]] = [(0.0, 0, "")] * len(bodies)
    queue = iter(range(len(bodies)))  # shared by the clients: one event loop, so no lock is needed

    async def one_client() -> None:
        connection = Connection(parts.hostname, parts.port)
        for index in queue:
            began = time.perf_counter()
            try:
                status = await asyncio.wait_for(
                    connection.post(parts.path, bodies[index], content_type), REQUEST_TIMEOUT_S
                )
                results[index] = (time.perf_counter() - began, status, "")
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as error:
                results[index] = (time.perf_counter() - began, 0, type(error).__name__)
                connection.close()  # a fresh connection for the next request
        connection.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return results


def drive(
    url: str, bodies: list[bytes], clients: int, content_type: str = "application/octet-stream"
) -> tuple[list[tuple[float, int, str]], float, float]:
    """_drive, with its wall time and the CPU time this (client) process spent."""
    cpu, began = time.process_time(), time.perf_counter()
    results = asyncio.run(_drive(url, bodies, clients, content_type))
    return results, time.perf_counter() - began, time.process_time() - cpu


def percentile_ms(latencies: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(latencies) * 1000, q)), 1)


# -- 3. throughput and latency --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a server takes one photo, and the request body it takes it in."""

    path: str
    content_type: str
    body: Callable[[bytes], bytes]  # a JPEG → the request body


RAW_PREDICT = Endpoint("/predict", "application/octet-stream", lambda jpeg: jpeg)


def load_level(server: Server, endpoint: Endpoint, photos: list[bytes], clients: int, requests: int) -> dict:
    """One level of load: `requests` photos (request bodies) from `clients` concurrent clients, and what the
    server saw meanwhile."""
    before, cpu_before, machine_before = server.metrics(), server.cpu_seconds(), machine_cpu_seconds()
    passes_before = len(server.batch_sizes())
    bodies = [photos[i % len(photos)] for i in range(requests)]
    results, wall, client_cpu = drive(f"{server.url}{endpoint.path}", bodies, clients, endpoint.content_type)
    server_cpu, machine_cpu = server.cpu_seconds() - cpu_before, machine_cpu_seconds() - machine_before
    after = server.metrics()
    peer_batches = server.batch_sizes()[passes_before:]

    def delta(name: str) -> float:
        """The change in `name`, summed over its labels (the batch histograms are labelled by model and version)."""

        def total(samples: dict[str, float]) -> float:
            return sum(value for key, value in samples.items() if key.split("{", 1)[0] == name)

        return total(after) - total(before)

    latencies = [seconds for seconds, status, _ in results if status == 200]
    images, passes = delta("bigtransfer_batch_images_sum"), delta("bigtransfer_batch_images_count")
    if peer_batches:
        images, passes = sum(peer_batches), len(peer_batches)
    return {
        "clients": clients, "requests": requests, "seconds": round(wall, 2),
        "requests_per_s": round(requests / wall, 2),
        "p50_ms": percentile_ms(latencies, 50) if latencies else None,
        "p99_ms": percentile_ms(latencies, 99) if latencies else None,
        "errors": sum(status != 200 for _, status, _ in results),
        "statuses": dict(Counter(str(status) for _, status, _ in results)),
        "client_cpu_s": round(client_cpu, 2), "client_cpu_pct": round(100 * client_cpu / wall, 1),
        "server_cpu_pct": round(100 * server_cpu / wall, 1),
        "other_cpu_pct": round(100 * max(0.0, machine_cpu - server_cpu - client_cpu) / wall, 1),
        "mean_batch": round(images / passes, 2) if passes else None,
        "forward_ms_per_image": round(1000 * delta("bigtransfer_batch_seconds_sum") / images, 1)
        if images and server.metrics_path else None,
        "server_ms_per_request": round(1000 * server_cpu / requests, 1),
    }  # fmt: skip


def measure_levels(server: Server, endpoint: Endpoint, jpegs: list[bytes], setting: dict) -> dict:
    """Warm-up (single requests, then batches up to the largest), then each level of load."""
    photos = [endpoint.body(jpeg) for jpeg in jpegs]
    singles, full = setting["warmup"]
    for clients, requests in ((1, singles), (max(setting["requests"]), full)):
        drive(f"{server.url}{endpoint.path}", [photos[i % len(photos)] for i in range(requests)], clients,
              endpoint.content_type)  # fmt: skip
    levels = {}
    for clients, requests in setting["requests"].items():
        levels[clients] = load_level(server, endpoint, photos, clients, requests)
        print(f"    {clients:2d} clients: {json.dumps(levels[clients])}", flush=True)
    return levels


def measure_configuration(export_dir: Path, options: list[str], jpegs: list[bytes], setting: dict, log: Path) -> dict:
    with running_server(export_dir, options, log) as server:
        levels = measure_levels(server, RAW_PREDICT, jpegs, setting)
    if server.exit_code != 0:
        raise RuntimeError(f"the server exited with {server.exit_code} after SIGTERM:\n{log.read_text()[-3000:]}")
    return levels


def throughput(export_dir: Path, jpegs: list[bytes], setting: dict, configurations: dict, work: Path) -> dict:
    rounds: dict[str, list[dict]] = {name: [] for name in configurations}
    for round_index in range(setting["rounds"]):
        order = list(configurations) if round_index % 2 == 0 else list(reversed(configurations))
        for name in order:
            print(f"  round {round_index + 1}, {name}: serve {' '.join(configurations[name])}", flush=True)
            log = work / f"serve-{name}-{round_index}.log"
            rounds[name].append(measure_configuration(export_dir, configurations[name], jpegs, setting, log))
    return {"configurations": {name: " ".join(options) for name, options in configurations.items()}, "rounds": rounds,
            "median": {name: median_levels(measured) for name, measured in rounds.items()}}  # fmt: skip


def median_levels(rounds: list[dict]) -> dict:
    """Per client count, the median over rounds of each figure (errors: summed)."""
    summary = {}
    for clients in rounds[0]:
        levels = [measured[clients] for measured in rounds]
        summary[clients] = {
            key: (sum(level[key] for level in levels) if key == "errors" else
                  round(statistics.median(level[key] for level in levels), 2))
            for key in ("requests_per_s", "p50_ms", "p99_ms", "errors", "client_cpu_pct", "server_cpu_pct",
                        "other_cpu_pct", "mean_batch", "forward_ms_per_image", "server_ms_per_request")
            if all(level[key] is not None for level in levels)
        }  # fmt: skip
    return summary


def ratios(measured: dict) -> dict:
    """Batched ÷ unbatched requests/s per client count (of the medians, and per round), p99 ÷ p50 at 8 clients."""
    batched, unbatched = measured["median"]["batched"], measured["median"]["unbatched"]
    pairs = list(zip(measured["rounds"]["batched"], measured["rounds"]["unbatched"]))
    result = {
        "throughput_batched_over_unbatched": {
            clients: round(batched[clients]["requests_per_s"] / unbatched[clients]["requests_per_s"], 2)
            for clients in batched
        },
        "throughput_ratio_per_round": {
            clients: [round(b[clients]["requests_per_s"] / u[clients]["requests_per_s"], 2) for b, u in pairs]
            for clients in batched
        },
        "p99_over_p50_at_8": {
            name: round(levels[8]["p99_ms"] / levels[8]["p50_ms"], 2) for name, levels in measured["median"].items()
        },
        "errors": sum(level["errors"] for levels in measured["median"].values() for level in levels.values()),
    }
    result["goals"] = {
        "throughput_at_32_ge_1.5x": result["throughput_batched_over_unbatched"][32] >= GOALS["throughput_ratio_at_32"],
        "p99_le_2x_p50_at_8_batched": result["p99_over_p50_at_8"]["batched"] <= GOALS["p99_over_p50_at_8"],
        "zero_errors": result["errors"] == 0,
    }
    return result


# -- 5. against the peers: LitServe, KServe's Python ModelServer, BentoML ------------------------------------------


def v2_infer_body(jpeg: bytes) -> bytes:
    """KServe v2 JSON: the photo as a BYTES `image` (base64), the top 5 by Triton's classification extension."""
    return json.dumps({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(jpeg).decode()]}],
        "outputs": [{"name": "scores", "parameters": {"classification": TOP_K}}],
    }).encode()  # fmt: skip


def base64_body(key: str, as_list: bool = False) -> Callable[[bytes], bytes]:
    def body(jpeg: bytes) -> bytes:
        text = base64.b64encode(jpeg).decode()
        return json.dumps({key: [text] if as_list else text}).encode()

    return body


def top_label(name: str, answer: Any) -> str:
    """The best label in one server's answer to one photo."""
    if name == "bigtransfer":
        return answer["outputs"][0]["data"][0].split(":", 2)[2]  # "score:index:label"
    if name == "kserve":
        return json.loads(answer["outputs"][0]["data"][0])[0]["label"]
    return answer["labels"][0]["label"] if name == "litserve" else answer[0][0]["label"]


@dataclasses.dataclass(frozen=True)
class Peer:
    endpoint: Endpoint
    ready_path: str
    command: Callable[[Path, int], list[str]]  # (venv, port) → the command, run in benchmarks/peers/


V2_INFER = Endpoint(f"/v2/models/{RACE_MODEL_NAME}/infer", "application/json", v2_infer_body)
PEERS = {
    "litserve": Peer(Endpoint("/predict", "application/json", base64_body("image")), "/health",
                     lambda venv, port: [str(venv / "bin" / "python"), "litserve_server.py"]),
    "kserve": Peer(V2_INFER, "/v2/health/ready", lambda venv, port: [str(venv / "bin" / "python"), "kserve_server.py"]),
    "bentoml": Peer(Endpoint("/classify", "application/json", base64_body("images", as_list=True)), "/readyz",
                    lambda venv, port: [str(venv / "bin" / "bentoml"), "serve", "bentoml_server:ImageClassifier",
                                        "--host", "127.0.0.1", "--port", str(port)]),
}  # fmt: skip


def peer_venv(name: str) -> Path:
    return PEER_CACHE / name


def setup_peers(names: list[str]) -> dict[str, str]:
    """Each peer's own venv under PEER_CACHE, from benchmarks/peers/NAME.txt (exact pins of the whole closure,
    installed with --no-deps); one whose recorded requirements equal the file's is left as it is."""
    done = {}
    for name in names:
        requirements = PEERS_DIR / f"{name}.txt"
        venv, marker = peer_venv(name), peer_venv(name) / "requirements.txt"
        if marker.exists() and marker.read_text() == requirements.read_text():
            done[name] = "ready"
            continue
        print(f"setting up {name}'s venv in {venv}", flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "-r", str(requirements)], check=True)  # fmt: skip
        shutil.copyfile(requirements, marker)
        done[name] = "installed"
    return done


def peer_versions(name: str) -> dict:
    """The versions in a peer's venv of the packages that shape its serving."""
    wanted = {name, "onnxruntime", "numpy", "pillow", "uvicorn", "starlette", "fastapi"}
    lines = (PEERS_DIR / f"{name}.txt").read_text().splitlines()
    pins = (line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    return {package.lower(): version for package, version in pins if package.lower() in wanted}


def peer_environment(export_dir: Path, setting: dict, batch_log: Path, port: int, work: Path) -> dict:
    """What peers/peer_model.py reads; the peers' venvs see neither this PYTHONPATH nor bigtransfer."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update({
        "BENCH_EXPORT": str(export_dir), "BENCH_THREADS": str(ORT_THREADS),
        "BENCH_ORT_ALLOW_SPINNING": ORT_ALLOW_SPINNING,
        "BENCH_MAX_BATCH_SIZE": str(setting["max_batch_size"]), "BENCH_MAX_DELAY_MS": f"{setting['max_delay_ms']:g}",
        "BENCH_PORT": str(port), "BENCH_BATCH_LOG": str(batch_log),
        "BENTOML_HOME": str(work / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "True",
    })  # fmt: skip
    return environment


@contextlib.contextmanager
def running_race_server(name: str, export_dir: Path, setting: dict, work: Path, log: Path) -> Iterator[Server]:
    """bigtransfer (batched, KServe v2 JSON) or a peer in its venv, on a free port."""
    if name == "bigtransfer":
        options = ["--name", RACE_MODEL_NAME, *setting["batched_options"]]
        with running_server(export_dir, options, log) as server:
            yield server
        return
    port, batch_log = free_port(), log.with_suffix(".batches")
    batch_log.unlink(missing_ok=True)
    peer = PEERS[name]
    with started(peer.command(peer_venv(name), port), port, log, peer.ready_path,
                 env=peer_environment(export_dir, setting, batch_log, port, work), cwd=PEERS_DIR, whole_group=True,
                 metrics_path=None, batch_log=batch_log) as server:  # fmt: skip
        yield server


def race_endpoint(name: str) -> Endpoint:
    return V2_INFER if name == "bigtransfer" else PEERS[name].endpoint


def best_labels(server: Server, name: str, jpegs: list[bytes]) -> list[str]:
    """The server's best label for each photo: the same model and preprocessing must give the same ones."""
    endpoint = race_endpoint(name)
    answers = [
        httpx.post(f"{server.url}{endpoint.path}", content=endpoint.body(jpeg), timeout=REQUEST_TIMEOUT_S,
                   headers={"content-type": endpoint.content_type}).raise_for_status().json()
        for jpeg in jpegs
    ]  # fmt: skip
    return [top_label(name, answer) for answer in answers]


def race(export_dir: Path, jpegs: list[bytes], setting: dict, names: list[str], work: Path) -> dict:
    """bigtransfer against each peer: a fresh server per round, the order reversed every other round."""
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    labels: dict[str, list[str]] = {}
    for round_index in range(setting["rounds"]):
        for name in names if round_index % 2 == 0 else list(reversed(names)):
            print(f"  round {round_index + 1}, {name}", flush=True)
            log = work / f"race-{name}-{round_index}.log"
            with running_race_server(name, export_dir, setting, work, log) as server:
                labels.setdefault(name, best_labels(server, name, jpegs))
                rounds[name].append(measure_levels(server, race_endpoint(name), jpegs, setting))
    return {
        "servers": {name: " ".join(setting["batched_options"]) if name == "bigtransfer" else PEERS[name].endpoint.path
                    for name in names},
        "peer_versions": {name: peer_versions(name) for name in names if name != "bigtransfer"},
        "ort_session": {"intra_op_num_threads": ORT_THREADS, "execution_mode": "sequential",
                        "session.intra_op.allow_spinning": ORT_ALLOW_SPINNING, "graph_optimization_level": "all"},
        "best_labels_agree_with_bigtransfer": {
            name: sum(a == b for a, b in zip(found, labels["bigtransfer"])) / len(jpegs)
            for name, found in labels.items() if name != "bigtransfer"
        },
        "rounds": rounds, "median": {name: median_levels(measured) for name, measured in rounds.items()},
    }  # fmt: skip


def offline_images_per_s(alone: dict, mean_batch: float | None) -> tuple[int, float]:
    """The model alone's images/s at the timed batch size nearest (in ratio) to `mean_batch`."""
    batch = min(BATCHES, key=lambda size: abs(math.log(size / (mean_batch or 1))))
    return batch, 1000 / alone["forward_ms_per_image"][batch]


def race_ratios(measured: dict, alone: dict | None) -> dict:
    """bigtransfer ÷ each peer and ÷ the best peer (requests/s; per client count, of the medians and per round),
    p99 against the best peer's, and each server's throughput ÷ the model alone's at the batch it reached."""
    median, rounds = measured["median"], measured["rounds"]
    ours, peers = median["bigtransfer"], [name for name in median if name != "bigtransfer"]
    result: dict[str, Any] = {"over_peer": {}, "over_best_peer": {}, "over_best_peer_per_round": {}, "p99": {}}
    for clients in ours:
        speed = {name: median[name][clients]["requests_per_s"] for name in peers}
        best = max(speed, key=speed.get)
        result["over_peer"][clients] = {name: round(ours[clients]["requests_per_s"] / speed[name], 2) for name in peers}
        result["over_best_peer"][clients] = {
            "peer": best,
            "ratio": round(ours[clients]["requests_per_s"] / speed[best], 2),
        }
        result["over_best_peer_per_round"][clients] = [
            round(
                levels[clients]["requests_per_s"]
                / max(rounds[name][index][clients]["requests_per_s"] for name in peers),
                2,
            )
            for index, levels in enumerate(rounds["bigtransfer"])
        ]
        result["p99"][clients] = {
            "bigtransfer": ours[clients]["p99_ms"],
            "best_peer": median[best][clients]["p99_ms"],
            "lowest_peer": min(median[name][clients]["p99_ms"] for name in peers),
        }
    if alone:
        result["serving_overhead"] = {
            name: {
                clients: dict(zip(("batch", "ratio"), (batch, round(level["requests_per_s"] / images_per_s, 2))))
                for clients, level in levels.items()
                for batch, images_per_s in [offline_images_per_s(alone, level.get("mean_batch"))]
            }
            for name, levels in median.items()
        }
    top = max(ours)
    result["errors"] = {name: sum(level["errors"] for level in levels.values()) for name, levels in median.items()}
    result["goals"] = {
        f"throughput_at_{top}_ge_best_peer": result["over_best_peer"][top]["ratio"] >= RACE_GOALS["over_best_peer"],
        f"p99_at_{top}_le_best_peer": result["p99"][top]["bigtransfer"] <= result["p99"][top]["best_peer"],
        "zero_errors": result["errors"]["bigtransfer"] == 0,
    }
    if alone:
        result["goals"][f"serving_overhead_at_{top}_ge_0.9"] = (
            result["serving_overhead"]["bigtransfer"][top]["ratio"] >= RACE_GOALS["serving_overhead"]
        )
    return result


# -- 4. soak --------------------------------------------------------------------------------------------------------


def bad_body(kind: str, rng: np.random.Generator, jpegs: list[bytes], bomb: bytes) -> bytes:
    if kind == "garbage":
        return rng.bytes(int(rng.integers(16, 20_000)))
    if kind == "bomb":
        return bomb
    if kind == "too_large":
        return rng.bytes(SOAK["large_body_bytes"])
    jpeg = jpegs[int(rng.integers(len(jpegs)))]
    return jpeg[: int(len(jpeg) * rng.uniform(0.2, 0.8))]  # a photo cut short: the decoder runs out of scanlines


def soak_requests(jpegs: list[bytes], count: int, bomb: bytes) -> tuple[list[str], list[bytes]]:
    """`count` requests, SOAK['bad_fraction'] of them bad at seeded positions, the bad kinds in turn."""
    rng = np.random.default_rng(SOAK["seed"])
    bad_positions = rng.permutation(count)[: round(count * SOAK["bad_fraction"])]
    kinds = ["good"] * count
    for turn, position in enumerate(bad_positions):
        kinds[position] = BAD_KINDS[turn % len(BAD_KINDS)]
    bodies = [
        jpegs[i % len(jpegs)] if kind == "good" else bad_body(kind, rng, jpegs, bomb) for i, kind in enumerate(kinds)
    ]
    return kinds, bodies


def soak_over_rest(
    server: Server, bodies: list[bytes], clients: int
) -> tuple[list[tuple[float, int, str]], float, float]:
    return drive(f"{server.url}/predict", bodies, clients)


# how the soak's requests reach the server, by --soak-protocol. gRPC goes here once `serve --grpc-port` exists
# (issue 34, item 1): a driver sending each body as a ModelInfer BYTES `image`, its status codes mapped to EXPECTED's
SOAK_DRIVERS = {"rest": soak_over_rest}


def soak(
    export_dir: Path, jpegs: list[bytes], count: int, options: list[str], work: Path, protocol: str = "rest"
) -> dict:
    bomb = png_header(work / "bomb.png", 30_000, 30_000).read_bytes()
    kinds, bodies = soak_requests(jpegs, count, bomb)
    options = [*options, "--max-body-bytes", str(SOAK["max_body_bytes"])]
    log = work / "serve-soak.log"
    outcomes: list[tuple[float, int, str]] = []
    rss, alive = [], True
    began = time.perf_counter()
    client_cpu = 0.0
    with running_server(export_dir, options, log) as server:
        rss.append((0, round(server.rss_mb(), 1)))
        marks = [SOAK["warmup"], *range(SOAK["rss_every"], count + 1, SOAK["rss_every"])]
        for start, stop in zip([0, *marks], marks):
            results, _, cpu = SOAK_DRIVERS[protocol](server, bodies[start:stop], SOAK["clients"])
            outcomes += results
            client_cpu += cpu
            alive = alive and server.alive
            rss.append((stop, round(server.rss_mb(), 1)))
        metrics = server.metrics()
    wall = time.perf_counter() - began
    by_kind: dict[str, Counter] = {kind: Counter() for kind in EXPECTED}
    for kind, (_, status, error) in zip(kinds, outcomes):
        by_kind[kind][str(status) if status else f"transport error ({error})"] += 1
    wrong = {
        kind: {s: n for s, n in statuses.items() if s != str(EXPECTED[kind])} for kind, statuses in by_kind.items()
    }
    served_counts = {re.search(r'code="(\d+)"', name)[1]: int(value) for name, value in metrics.items()
                     if name.startswith("bigtransfer_requests_total") and 'route="predict"' in name}  # fmt: skip
    warm, end = dict(rss)[SOAK["warmup"]], rss[-1][1]
    good_latencies = [
        seconds for kind, (seconds, status, _) in zip(kinds, outcomes) if kind == "good" and status == 200
    ]
    return {
        "model": f"tiny (TINY config, {TINY_SIZE} px)", "options": " ".join(options), "protocol": protocol,
        "requests": count,
        "clients": SOAK["clients"], "seconds": round(wall, 1), "requests_per_s": round(count / wall, 1),
        "good_p50_ms": percentile_ms(good_latencies, 50), "good_p99_ms": percentile_ms(good_latencies, 99),
        "client_cpu_s": round(client_cpu, 1),
        "by_kind": {kind: dict(statuses) for kind, statuses in by_kind.items()},
        "server_counted_by_status": served_counts,
        "unexpected": {kind: statuses for kind, statuses in wrong.items() if statuses},
        "server_stayed_up": alive, "rss_mb": rss, "rss_after_warmup_mb": warm, "rss_end_mb": end,
        "rss_growth_pct": round(100 * (end - warm) / warm, 1), "exit_code_after_sigterm": server.exit_code,
    }  # fmt: skip


# -- the report -----------------------------------------------------------------------------------------------------


def versions() -> dict:
    names = ("torch", "onnxruntime", "uvicorn", "starlette", "httpx", "pillow", "numpy", "prometheus-client")
    found = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return {"python": sys.version.split()[0], **found}


def print_levels(name: str, level: dict, clients: int) -> None:
    print(f"{name:11s} {clients:2d} clients: {level['requests_per_s']:7.2f} req/s  "
          f"p50 {level['p50_ms']:7.1f} ms  p99 {level['p99_ms']:7.1f} ms  errors {level['errors']}  "
          f"mean batch {level.get('mean_batch')}  forward {level.get('forward_ms_per_image')} ms/image  "
          f"CPU: client {level['client_cpu_pct']} %, server {level['server_cpu_pct']} %, other processes "
          f"{level['other_cpu_pct']} %")  # fmt: skip


def noise_note(measured: dict) -> None:
    busiest = max(level["other_cpu_pct"] for levels in measured["median"].values() for level in levels.values())
    if busiest > NOISY_OTHER_CPU_PCT:
        print(f"NOISY: other processes used up to {busiest} % of a core during a level (median over rounds)")


def print_summary(results: dict) -> None:
    alone = results.get("model_alone")
    if alone:
        per_image = ", ".join(f"batch {b}: {ms} ms" for b, ms in alone["forward_ms_per_image"].items())
        print(f"model alone: decode+preprocess {alone['decode_preprocess_ms_per_image']} ms per photo; forward pass "
              f"per image {per_image} (other processes {alone['other_cpu_pct']} % of a core)")  # fmt: skip
    measured = results.get("throughput")
    if measured:
        for name, levels in measured["median"].items():
            for clients, level in levels.items():
                print_levels(name, level, clients)
        print(f"ratios: {json.dumps(results['ratios'])}")
        noise_note(measured)
    raced = results.get("race")
    if raced:
        print(f"race (bigtransfer on KServe v2 JSON; peers each with its own batching): {json.dumps(raced['servers'])}")
        for name, levels in raced["median"].items():
            for clients, level in levels.items():
                print_levels(name, level, clients)
        print(f"best labels agree with bigtransfer's: {json.dumps(raced['best_labels_agree_with_bigtransfer'])}")
        print(f"race ratios: {json.dumps(results['race_ratios'])}")
        noise_note(raced)
    if results.get("soak"):
        print(f"soak: {json.dumps(results['soak'])}")


def peer_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown peer {', '.join(unknown) or '(none)'}: use some of {','.join(PEERS)}"
        )
    return names


def chosen_batch_size(model_alone: dict | None) -> int:
    """The largest timed batch whose forward pass per image is within BATCH_TOLERANCE of the best one's: on a CPU
    where batching gains nothing, a larger batch only makes its requests wait for each other (on this 2-core EPYC
    one run timed batch 32 at 18 % more per image than 16, another at 2 %); every batching server gets this cap."""
    if not model_alone:
        return max(BATCHES)
    per_image = {int(batch): ms for batch, ms in model_alone["forward_ms_per_image"].items()}
    best = min(per_image.values())
    return max(batch for batch, ms in per_image.items() if ms <= best * (1 + BATCH_TOLERANCE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny model at 64 px, fewer requests: to try the script")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the models and logs (default: temp, removed)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per server configuration (default 2; quick 1)")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="every batching server's (default: the largest batch whose forward pass per image is "
                        f"within {BATCH_TOLERANCE:.0%} of the best in part 1; 32 without part 1)")  # fmt: skip
    parser.add_argument("--max-delay-ms", type=float, default=10.0, help="the batched configuration's (default 10)")
    parser.add_argument("--soak-requests", type=int, default=None, help="default 10,000; quick 1,000")
    parser.add_argument("--skip", nargs="*", default=[], choices=["alone", "throughput", "race", "soak"],
                        help="parts to skip")  # fmt: skip
    parser.add_argument("--peers", type=peer_names, default=list(PEERS), metavar="NAMES",
                        help=f"the peers to race, comma-separated (default {','.join(PEERS)})")  # fmt: skip
    parser.add_argument(
        "--setup-peers",
        action="store_true",
        help=f"only make (or check) the peers' venvs under {PEER_CACHE}; the race makes any missing",
    )
    parser.add_argument("--soak-protocol", default="rest", choices=sorted(SOAK_DRIVERS), help="default rest")
    parser.add_argument("--measure-model", default=None, help=argparse.SUPPRESS)  # the subprocess of part 1
    parser.add_argument("--alone-rounds", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_model:
        print(json.dumps(measure_model(args.measure_model, args.alone_rounds)))
        return
    if args.setup_peers:
        print(json.dumps(setup_peers(args.peers)))
        return
    setting = dict(QUICK if args.quick else FULL)
    setting.update({key: value for key, value in (("rounds", args.rounds), ("soak_requests", args.soak_requests))
                    if value is not None})  # fmt: skip
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"cpu": cpu_description(), "versions": versions(), "setting": setting,
                     "load_average_at_start": os.getloadavg()[0], "command": " ".join(sys.argv)}  # fmt: skip
    print(results["cpu"], results["versions"], flush=True)
    began = time.perf_counter()
    try:
        jpegs = photo_jpegs()
        results["photos"] = {"count": len(jpegs), "mean_kb": round(sum(map(len, jpegs)) / len(jpegs) / 1000, 1)}
        export_dir, results["model"] = make_export(work, setting["model"], setting["size"])
        print(f"model: {results['model']}", flush=True)
        if "alone" not in args.skip:
            results["model_alone"] = model_alone(export_dir, setting["alone_rounds"])
            print(f"model alone: {json.dumps(results['model_alone'])}", flush=True)
        max_batch_size = args.max_batch_size or chosen_batch_size(results.get("model_alone"))
        configurations = {
            "batched": ["--max-batch-size", str(max_batch_size), "--max-delay-ms", f"{args.max_delay_ms:g}"],
            "unbatched": ["--max-batch-size", "1"],
        }
        setting.update(max_batch_size=max_batch_size, max_delay_ms=args.max_delay_ms,
                       batched_options=configurations["batched"])  # fmt: skip
        print(f"batching servers: --max-batch-size {max_batch_size} --max-delay-ms {args.max_delay_ms:g}", flush=True)
        if "throughput" not in args.skip:
            results["throughput"] = throughput(export_dir, jpegs, setting, configurations, work)
            results["ratios"] = ratios(results["throughput"])
        if "race" not in args.skip:
            results["peer_setup"] = setup_peers(args.peers)
            names = ["bigtransfer", *args.peers]
            results["race"] = race(export_dir, jpegs, setting, names, work)
            results["race_ratios"] = race_ratios(results["race"], results.get("model_alone"))
        if "soak" not in args.skip:
            tiny_dir = export_dir if setting["model"] == "tiny" else make_export(work, "tiny", TINY_SIZE)[0]
            results["soak"] = soak(tiny_dir, jpegs, setting["soak_requests"], configurations["batched"], work,
                                   args.soak_protocol)  # fmt: skip
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - began, 1)
    results["load_average_at_end"] = os.getloadavg()[0]  # another process on these cores makes the figures noisy
    print_summary(results)
    print(f"total {results['seconds']} s; load average at start {results['load_average_at_start']:.1f}, at end "
          f"{results['load_average_at_end']:.1f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
