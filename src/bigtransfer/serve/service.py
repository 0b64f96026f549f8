"""One served model version, whatever the protocol asks it: the model, its own batcher, the places of its
requests and its decode memory, and the operations REST (app.py) and gRPC share — so that both protocols admit,
decode, batch, check and answer alike, and refuse with the same messages (`ServeError`, `refusal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..inference.pipelines import ranked
from . import admission, tracing
from .admission import DecodeBudget, ImagePlaces, RequestPlaces, TooManyImages
from .batching import BatchRecord, DynamicBatcher, QueueFull
from .kserve import ProtocolError, RequestedOutput, Tensor, classification_strings
from .model import ServedModel

OUTPUTS = ("logits", "scores")
SERVER_FAILED = "The server failed on this request; its log has the details."  # a bug's answer (500, INTERNAL)
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one server accepts and how it batches (the `serve` options); each model version has its own batcher
    and queue under these limits."""

    max_batch_size: int = 32  # images per forward pass
    max_delay_ms: float = 5.0  # how long the first request of a batch waits for others
    max_queue: int = 256  # images under way (being decoded, waiting for the model, in it); beyond it, 503
    max_body_bytes: int = 20 * 2**20  # per request; beyond it, 413
    timeout_s: float = 30.0  # per request; beyond it, 504
    warmup_batch_sizes: tuple[int, ...] | None = None  # a forward pass at each before ready; None: 1 and the largest

    def __post_init__(self):
        if (
            min(self.max_batch_size, self.max_queue, self.max_body_bytes) < 1
            or self.max_delay_ms < 0
            or self.timeout_s <= 0
        ):
            raise ValueError(f"Server limits out of range: {self}.")
        if self.warmup_batch_sizes is not None:
            object.__setattr__(self, "warmup_batch_sizes", tuple(self.warmup_batch_sizes))  # a list, from JSON
            if not all(1 <= size <= self.max_batch_size for size in self.warmup_batch_sizes):
                raise ValueError(f"Warm-up batch sizes must be from 1 to --max-batch-size {self.max_batch_size}, "
                                 f"got {', '.join(map(str, self.warmup_batch_sizes))}.")  # fmt: skip

    @property
    def warmup_sizes(self) -> list[int]:
        """The batch sizes of the warm-up passes, smallest first."""
        chosen = (1, self.max_batch_size) if self.warmup_batch_sizes is None else self.warmup_batch_sizes
        return sorted(set(chosen))


class ServeError(Exception):
    """A refusal with its HTTP status (gRPC maps the status to its code), message and headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def refusal(error: BaseException, limits: Limits) -> ServeError | None:
    """The answer to a request that failed with `error` — the client's fault or the server's load — or None for a
    bug (answered 500, its traceback logged)."""
    if isinstance(error, ServeError):
        return error
    if isinstance(error, ProtocolError):
        return ServeError(400, str(error))
    if isinstance(error, TooManyImages):
        return ServeError(413, str(error))
    if isinstance(error, QueueFull):
        return ServeError(503, str(error), {"Retry-After": "1"})
    if isinstance(error, asyncio.TimeoutError):
        return ServeError(504, f"The request took longer than the server's limit of {limits.timeout_s:g} s.")
    return None


class ModelService:
    """One version of one model, as a server serves it (`start` inside the server's event loop, `stop` on its
    way out)."""

    def __init__(
        self,
        model: ServedModel,
        limits: Limits = Limits(),
        version: str = "1",
        on_batch: Callable[[ModelService, BatchRecord], None] | None = None,
    ):
        self.model, self.limits, self.version = model, limits, version
        self.decoding = DecodeBudget(admission.MAX_DECODE_BYTES())
        self.batcher = DynamicBatcher(model.logits, limits.max_batch_size, limits.max_delay_ms / 1000,
                                      limits.max_queue,
                                      on_batch=None if on_batch is None else lambda record: on_batch(self, record),
                                      on_the_way=lambda: self.places.arriving)  # fmt: skip
        self.places = ImagePlaces(limits.max_queue, on_left=self.batcher.nudge)
        self.ready = False

    @property
    def name(self) -> str:
        return self.model.name

    async def start(self) -> None:
        """Warm up, then serve: requests that come meanwhile wait in the batcher's queue (within their timeout),
        and `ready` stays False — the health routes answer 503 — until every warm-up pass has run."""
        await asyncio.to_thread(self.warm_up)
        self.batcher.start()
        self.ready = True

    def warm_up(self) -> None:
        """One forward pass at each of `Limits.warmup_sizes`, on the requests' own path (uint8 pixels through
        `ServedModel.logits`): a runtime's first pass allocates its memory and sets up its kernels, and torch's
        again at each new batch size (oneDNN's primitives are made per shape) — time no request should pay."""
        sizes = self.limits.warmup_sizes
        if not sizes:
            return
        began = time.perf_counter()
        for size in sizes:
            self.model.logits(np.zeros((size, self.model.height, self.model.width, 3), np.uint8))
        logger.info("warming up %s v%s at batch sizes %s … ready in %.1f s", self.name, self.version,
                    ", ".join(map(str, sizes)), time.perf_counter() - began)  # fmt: skip

    async def stop(self) -> None:
        """Not ready any more; what is queued finishes (up to the request timeout)."""
        self.ready = False
        await self.batcher.stop(self.limits.timeout_s)
        self.decoding.close()

    # -- metadata -------------------------------------------------------------------------------------------------
    @property
    def platform(self) -> str:
        return "pytorch" if hasattr(self.model.network, "parameters") else "onnxruntime_onnx"

    def metadata(self) -> dict[str, Any]:
        """KServe v2 model metadata (REST's JSON; gRPC's ModelMetadataResponse has the same fields)."""
        height, width, classes = self.model.height, self.model.width, len(self.model.labels)
        return {
            "name": self.name, "versions": [self.version], "platform": self.platform,
            "inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, height, width]},
                       {"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, classes]} for name in OUTPUTS],
        }  # fmt: skip

    # -- admission --------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def request(self) -> Iterator[RequestPlaces]:
        """The places of one request: `places(images)` takes them (413/503 when they cannot be had); all are given
        back when the request ends. Hand them to `classify`/`infer`: the batcher waits for admitted images only."""
        tracing.current().set({"model": self.name, "model_version": self.version})
        with self.places.for_request() as places:
            yield places

    # -- inference ------------------------------------------------------------------------------------------------
    async def pixels(self, images: list[bytes]) -> np.ndarray:
        """Encoded images → N×H×W×3 uint8 pixels (`ServedModel.pixels`), decoded in threads as the decode memory
        allows, one image's turn at a time (so that other requests' images take turns with these), each charged
        what its header says decoding will take (`ServedModel.decoding_bytes`); 400 naming the first unusable
        one, refused from its header before it waits for a turn. Once one image fails to decode, the request's
        images not yet started are never decoded."""
        with tracing.current().stage("decode"):
            return await self._decoded(images)

    async def _decoded(self, images: list[bytes]) -> np.ndarray:
        names = ["the upload"] if len(images) == 1 else [f"image {i} of the request" for i in range(len(images))]
        failed = threading.Event()

        def pixels(data: bytes, name: str) -> np.ndarray | None:
            if failed.is_set():
                return None  # the request fails with the earlier image's error
            try:
                return self.model.pixels(data, name)
            except Exception:
                failed.set()
                raise

        decodes = []
        try:
            for data, name in zip(images, names):
                if failed.is_set():
                    break
                decodes.append(await self.decoding.start(self.model.decoding_bytes(data, name), pixels, data, name))
            decoded = await asyncio.gather(*decodes)
        except (ValueError, OSError) as error:
            raise ProtocolError(str(error)) from None
        finally:
            for decode in decodes:
                decode.cancel()  # those not started yet; a running decode finishes, its memory counted till then
        return np.stack(decoded)

    async def logits(self, pixels: np.ndarray, places: RequestPlaces | None = None) -> torch.Tensor:
        """Logits (float32, on the CPU) through the batcher (its images admitted with `places`, if any); a request
        larger than a batch goes in batch-sized parts, all withdrawn when one fails."""
        size = self.limits.max_batch_size
        tracing.current().set({"images": len(pixels)})
        parts = [
            asyncio.ensure_future(self._batched(pixels[start : start + size], places))
            for start in range(0, len(pixels), size)
        ]
        try:
            return torch.cat(await asyncio.gather(*parts))
        except BaseException:
            for part in parts:
                part.cancel()
            raise

    async def _batched(self, pixels: np.ndarray, places: RequestPlaces | None) -> Any:
        pending = self.batcher.enqueue(pixels)
        if places is not None:
            places.arrived(len(pixels))
        try:
            return await pending.done
        finally:
            tracing.current().batched(pending)

    async def classify(self, image: bytes, top_k: int, places: RequestPlaces | None = None) -> list[dict[str, Any]]:
        """One encoded image's top-k labels and scores, as `predict` ranks them (its place already taken)."""
        scores = self.model.scores(await self.logits(await self.pixels([image]), places))
        (labels,) = ranked(scores, top_k, self.model.network.config.id2label)
        return labels

    async def infer(self, inputs: list[Tensor], places: RequestPlaces) -> dict[str, np.ndarray]:
        """The outputs (logits, scores) of an infer request's one input: `image` (BYTES, encoded images) or
        `pixel_values` (FP32 N×3×H×W), its images admitted with `places` before any is decoded."""
        if len(inputs) != 1:
            raise ProtocolError("Send exactly one input: pixel_values (FP32 N×3×H×W) or image (BYTES, encoded images).")
        (tensor,) = inputs
        places(len(tensor.value) if tensor.datatype == "BYTES" else (tensor.shape or [1])[0])
        if tensor.name == "image" and tensor.datatype == "BYTES":
            pixels = await self.pixels(list(tensor.value)) if tensor.value else None
        elif tensor.name == "pixel_values" and tensor.datatype == "FP32":
            expected = [3, self.model.height, self.model.width]
            if len(tensor.shape) != 4 or list(tensor.shape[1:]) != expected:
                raise ProtocolError(
                    f"pixel_values must have shape [N, {', '.join(map(str, expected))}], got {tensor.shape}."
                )
            pixels = np.asarray(tensor.value, dtype=np.float32)
            if not np.isfinite(pixels).all():
                raise ProtocolError("pixel_values holds NaN or infinite values.")
        else:
            raise ProtocolError(
                f"Unknown input {tensor.name!r} ({tensor.datatype}): use pixel_values (FP32) or image (BYTES)."
            )
        if pixels is None or not len(pixels):
            raise ProtocolError("The input holds no image.")
        logits = await self.logits(pixels, places)
        if tensor.name == "pixel_values" and not torch.isfinite(logits).all():  # JSON has no NaN: out-of-range pixels
            raise ProtocolError(
                "The model's output for these pixel_values is not finite: send normalised pixels (values within a "
                f"few units of 0; the largest here is {np.abs(pixels).max():g})."
            )
        return {"logits": logits.numpy(), "scores": self.model.scores(logits).numpy()}  # views, no copies

    def outputs(
        self, values: dict[str, np.ndarray], requested: list[RequestedOutput] | None, binary_default: bool
    ) -> list[tuple[str, np.ndarray, bool]]:
        """The requested outputs (all of them when none is named, as Triton does): (name, array, binary), an
        output asked with the classification extension as its top-k "score:index:label" strings."""
        chosen = []
        for output in requested or [RequestedOutput(name, binary_default, 0) for name in OUTPUTS]:
            if output.name not in values:
                raise ProtocolError(f"Unknown output {output.name!r}: this model has {', '.join(OUTPUTS)}.")
            array = values[output.name]
            if output.classification > 0:
                array = classification_strings(array, output.classification, self.model.labels)
            chosen.append((output.name, array, output.binary))
        return chosen
