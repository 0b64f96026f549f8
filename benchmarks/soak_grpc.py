"""The soak of issue 23, over gRPC (issue 34): `bigtransfer serve --grpc-port` on the soak's tiny model, its
requests sent as Triton's ModelInfer (the image as a BYTES input in raw_input_contents, as tritonclient.grpc
sends it) by asyncio gRPC clients, one channel (HTTP/2 connection) each.

    python benchmarks/soak_grpc.py                     # 10,000 requests, 8 clients, 10 % bad
    python benchmarks/soak_grpc.py --requests 1000     # to try it

The requests are bench_serve.py's soak requests (the same seeded bad positions and kinds: random bytes, a
70-byte PNG declaring 30000×30000 pixels, 1.5 MB bodies, photos cut short), the server started with the same
options (--max-body-bytes 1000000). Every bad one must get its status code (INVALID_ARGUMENT; RESOURCE_EXHAUSTED
for the large body, refused by gRPC before it is read whole), every good one OK; the server must stay up; its RSS
after the first 500 requests against the end must grow ≤ 10 %; SIGTERM must end it with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_serve import SOAK, TINY_SIZE, make_export, percentile_ms, photo_jpegs, running_server, soak_requests
from helpers import free_port, png_header

EXPECTED = {"good": "OK", "garbage": "INVALID_ARGUMENT", "bomb": "INVALID_ARGUMENT", "too_large": "RESOURCE_EXHAUSTED",
            "truncated": "INVALID_ARGUMENT"}  # fmt: skip
OPTIONS = ["--max-batch-size", "32", "--max-delay-ms", "10", "--max-body-bytes", str(SOAK["max_body_bytes"])]
REQUEST_TIMEOUT_S = 120


def infer_request(model: str, image: bytes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(
        model_name=model, raw_input_contents=[struct.pack("<I", len(image)) + image]
    )
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.outputs.add(name="scores").parameters["classification"].int64_param = 5
    return request


async def drive(address: str, model: str, bodies: list[bytes], clients: int) -> list[tuple[float, str]]:
    """(seconds, status code name) of each body's request, sent by `clients` concurrent channels."""
    results: list[tuple[float, str] | None] = [None] * len(bodies)
    pending = iter(range(len(bodies)))

    async def one_client() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            for index in pending:
                began = time.perf_counter()
                try:
                    await infer(infer_request(model, bodies[index]), timeout=REQUEST_TIMEOUT_S)
                    code = "OK"
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                results[index] = (time.perf_counter() - began, code)

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return results


def soak(export_dir: Path, jpegs: list[bytes], count: int, work: Path) -> dict:
    bomb = png_header(work / "bomb.png", 30_000, 30_000).read_bytes()
    kinds, bodies = soak_requests(jpegs, count, bomb)
    grpc_port = free_port()
    options = [*OPTIONS, "--grpc-port", str(grpc_port)]
    outcomes: list[tuple[float, str]] = []
    rss, alive, began = [], True, time.perf_counter()
    with running_server(export_dir, options, work / "serve-soak-grpc.log") as server:
        model = _model_name(f"127.0.0.1:{grpc_port}")
        rss.append((0, round(server.rss_mb(), 1)))
        marks = [SOAK["warmup"], *range(SOAK["rss_every"], count + 1, SOAK["rss_every"])]
        for start, stop in zip([0, *marks], marks):
            outcomes += asyncio.run(drive(f"127.0.0.1:{grpc_port}", model, bodies[start:stop], SOAK["clients"]))
            alive = alive and server.alive
            rss.append((stop, round(server.rss_mb(), 1)))
        counted = {name: int(value) for name, value in server.metrics().items()
                   if name.startswith("bigtransfer_requests_total") and 'route="grpc/ModelInfer"' in name}  # fmt: skip
    wall = time.perf_counter() - began
    by_kind: dict[str, Counter] = {kind: Counter() for kind in EXPECTED}
    for kind, (_, code) in zip(kinds, outcomes):
        by_kind[kind][code] += 1
    unexpected = {
        kind: {code: n for code, n in codes.items() if code != EXPECTED[kind]} for kind, codes in by_kind.items()
    }
    good = [seconds for kind, (seconds, code) in zip(kinds, outcomes) if kind == "good" and code == "OK"]
    warm, end = dict(rss)[SOAK["warmup"]], rss[-1][1]
    return {
        "model": f"tiny (TINY config, {TINY_SIZE} px)", "options": " ".join(options), "requests": count,
        "clients": SOAK["clients"], "seconds": round(wall, 1), "requests_per_s": round(count / wall, 1),
        "good_p50_ms": percentile_ms(good, 50), "good_p99_ms": percentile_ms(good, 99),
        "by_kind": {kind: dict(codes) for kind, codes in by_kind.items()}, "server_counted": counted,
        "unexpected": {kind: codes for kind, codes in unexpected.items() if codes}, "server_stayed_up": alive,
        "rss_mb": rss, "rss_growth_pct": round(100 * (end - warm) / warm, 1),
        "exit_code_after_sigterm": server.exit_code,
    }  # fmt: skip


def _model_name(address: str) -> str:
    """The served model's name, from the repository index (an export directory's name is its default)."""
    with grpc.insecure_channel(address) as channel:
        index = service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            service_pb2.RepositoryIndexRequest(), timeout=30
        )
    return index.models[0].name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000, help="how many (default 10,000)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-grpc-"))
    try:
        export_dir, _ = make_export(work, "tiny", TINY_SIZE)
        results = soak(export_dir, photo_jpegs(), args.requests, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results))
    passed = (not results["unexpected"] and results["server_stayed_up"] and results["rss_growth_pct"] <= 10
              and results["exit_code_after_sigterm"] == 0)  # fmt: skip
    print("soak over gRPC:", "passed" if passed else "FAILED")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
