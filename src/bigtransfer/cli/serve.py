"""`bigtransfer serve`: a KServe v2 inference server for a model, with dynamic batching and a page to try it."""

from __future__ import annotations

import argparse

from .._util.package import install_hint
from ..serve.address import HIGHEST_PORT, LOWEST_PORT, check_port
from ..serve.tracing import traces_url
from ._options import (
    BF16_EXPORT_HELP,
    RenamedOption,
    add_device_arguments,
    add_model_argument,
    non_negative_float,
    positive_float,
    positive_int,
)


def register(commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve a model over HTTP: KServe v2 (Triton's protocol), POST /predict, a page at /, /metrics",
        description="Serve MODEL (anything predict takes: a zoo name, a run's model/, an export directory) with "
        "dynamic batching: requests arriving within --max-delay-ms share one forward pass of up to "
        "--max-batch-size images. Routes: GET / (a page to try the model), POST /predict (an image as the body or "
        "a multipart file; ?top_k=5), the KServe v2 REST protocol under /v2 (health, metadata, "
        "/v2/models/NAME/infer with pixel_values FP32 N×3×H×W or image BYTES, JSON or binary tensors, the "
        "classification extension), GET /metrics (Prometheus). SIGTERM stops accepting, lets the requests under way "
        "finish, then exits 0 (Ctrl-C does the same and exits 130). The host and port are checked before the model "
        "loads.",
        epilog="curl -X POST --data-binary @cat.jpg 'http://127.0.0.1:8000/predict?top_k=3'   "
        "· tritonclient.http.InferenceServerClient('127.0.0.1:8000') works unchanged, and with --grpc-port 8001 "
        "tritonclient.grpc.InferenceServerClient('127.0.0.1:8001').",
    )
    add_model_argument(parser, "the model to serve, or a model repository: a folder of models (model folders, runs, "
                       "exports, Triton models as `export --format triton` writes them), each served by its folder's "
                       "name", positional=True)  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=port_number, default=8000,
                        help=f"port to listen on, {LOWEST_PORT} to {HIGHEST_PORT} (default 8000)")  # fmt: skip
    parser.add_argument("--grpc-port", type=port_number, default=None, metavar="PORT",
                        help="also serve gRPC (KServe v2 / Triton's GRPCInferenceService, e.g. tritonclient.grpc) on "
                        "this port, by the same models and batchers, with the same limits (default: no gRPC; "
                        "Triton uses 8001)")  # fmt: skip
    parser.add_argument("--allowed-hosts", type=names, default=(), metavar="NAMES",
                        help="Host names to answer to besides IP addresses, comma-separated (*.example.com: its "
                        "subdomains; *: any): a guard against DNS rebinding. Default: localhost when listening on "
                        "loopback, the --host name, any name on 0.0.0.0")  # fmt: skip
    parser.add_argument("--allowed-origins", type=names, default=(), metavar="ORIGINS",
                        help="other sites whose pages may POST here and read the answers (CORS), comma-separated, "
                        "e.g. https://app.example.com (*: any); by default only the server's own page may")  # fmt: skip
    parser.add_argument("--name", help="the model's name in /v2/models/NAME (default: from MODEL; a repository's "
                        "models are named by their folders)")  # fmt: skip
    repository = parser.add_argument_group("model repository (as Triton's options)")
    repository.add_argument("--model-control-mode", choices=["none", "explicit"], default="none",
                            help="none: every model loads at start, load and unload are refused (default); explicit: "
                            "only --load-model models load at start, POST /v2/repository/models/NAME/load|unload "
                            "load and unload them while serving")  # fmt: skip
    repository.add_argument("--load-model", dest="load_models", action="append", default=[], metavar="NAME",
                            help="with --model-control-mode explicit: a model to load at start (repeatable; '*': "
                            "all)")  # fmt: skip
    add_device_arguments(parser, BF16_EXPORT_HELP)
    batching = parser.add_argument_group("batching and limits")
    batching.add_argument("--max-batch-size", type=positive_int, default=32, metavar="N",
                          help="images per forward pass (default 32; 1 = no batching)")  # fmt: skip
    batching.add_argument("--max-delay-ms", type=non_negative_float, default=5.0, metavar="MS",
                          help="how long a request waits for others to share its batch — only for requests already "
                          "admitted (being read or decoded): with none on their way it goes at once (default 5)")  # fmt: skip
    batching.add_argument("--max-queue", type=positive_int, default=256, metavar="N",
                          help="images under way (being decoded, waiting for the model, in it); more are refused with 503 "
                          "and Retry-After (default 256)")  # fmt: skip
    batching.add_argument("--max-body-bytes", type=positive_int, default=20 * 2**20, metavar="BYTES",
                          help="largest request body; larger ones get 413 (default 20 MiB)")  # fmt: skip
    batching.add_argument("--timeout", type=positive_float, default=30.0, metavar="S",
                          help="per-request limit; slower requests get 504 (default 30)")  # fmt: skip
    batching.add_argument("--warmup-batch-sizes", type=batch_sizes, metavar="N,N",
                          help="a forward pass at each of these batch sizes before the model is ready (its first "
                          "passes set up the runtime); default 1 and --max-batch-size; none: no warm-up")  # fmt: skip
    parser.add_argument("--processes", type=positive_int, default=1, metavar="N",
                        help="server processes, each with the model (CPUs: they share the cores; default 1)")  # fmt: skip
    # the old spelling, renamed because every other command's --workers counts image-loading processes
    parser.add_argument("--workers", dest="processes", type=positive_int, action=RenamedOption,
                        note="--workers is now --processes for serve; --workers will be removed")  # fmt: skip
    parser.add_argument("--otlp-endpoint", type=otlp_endpoint, metavar="URL",
                        help="export OpenTelemetry traces of /predict and infer requests (spans: decode, queue_wait, "
                        "forward, encode) over OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318 (/v1/traces "
                        "is added); OTEL_SERVICE_NAME and the other OTEL_* variables apply. Default: no tracing")  # fmt: skip
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="info logs every request as one JSON line on stderr (default)")  # fmt: skip
    parser.set_defaults(handler=handle)


def port_number(text: str) -> int:
    """An argparse type for --port, so that a port no socket can have is refused before anything loads."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port: ports are whole numbers from {LOWEST_PORT} to {HIGHEST_PORT}"
        )
    try:
        return check_port(int(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def otlp_endpoint(text: str) -> str:
    """An argparse type for --otlp-endpoint: an http(s) URL, checked before anything loads."""
    try:
        traces_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def names(text: str) -> tuple[str, ...]:
    """An argparse type for a comma-separated list of names."""
    listed = tuple(name.strip() for name in text.split(",") if name.strip())
    if not listed:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing: give names separated by commas")
    return listed


def batch_sizes(text: str) -> tuple[int, ...]:
    """An argparse type for --warmup-batch-sizes: whole numbers ≥ 1, comma-separated, or none."""
    if text.strip().lower() == "none":
        return ()
    sizes = [size.strip() for size in text.split(",")]
    if not all(size.isdigit() and int(size) >= 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of batch sizes: give e.g. 1,8,32, or none")
    return tuple(int(size) for size in sizes)


def handle(args: argparse.Namespace) -> int:
    try:
        from ..serve.runner import serve
        from ..serve.service import Limits
    except ImportError as error:
        raise ImportError(f"Serving needs {error.name}: {install_hint('serve')}.") from None

    limits = Limits(args.max_batch_size, args.max_delay_ms, args.max_queue, args.max_body_bytes, args.timeout,
                    warmup_batch_sizes=args.warmup_batch_sizes)  # fmt: skip
    serve(args.model, args.host, args.port, limits=limits, processes=args.processes, device=args.device, bf16=args.bf16,
          name=args.name, log_level=args.log_level, allowed_hosts=args.allowed_hosts,
          allowed_origins=args.allowed_origins, model_control=args.model_control_mode,
          load_models=tuple(args.load_models), grpc_port=args.grpc_port,
          otlp_endpoint=args.otlp_endpoint)  # fmt: skip
    return 0
