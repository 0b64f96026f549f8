"""What a server takes on at once, counted before the work and not after it: places for images (a request holds
one from before its body is read, then one per image, until it is answered: the images being decoded count as
well as those waiting for the model), and the memory of the images being decoded (from each image's header, so
that a 97 KB PNG declaring 9000×9000 pixels waits its turn instead of taking 850 MB beside five others)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from .._util.limits import EnvLimit
from .batching import QueueFull

DECODE_BYTES_ENV = "BIGTRANSFER_SERVE_DECODE_BYTES"
# decoded bytes of the images being decoded at once: 14 12-megapixel photos, more than the cores can decode
MAX_DECODE_BYTES = EnvLimit(DECODE_BYTES_ENV, 512 * 2**20)


class TooManyImages(ValueError):
    """One request holds more images than the server takes on at once (413): it could never be served."""


class ImagePlaces:
    """At most `limit` images under way, over all requests (--max-queue). `for_request()` gives a request its
    `RequestPlaces`: it calls them with its count of images so far, and `arrived(n)` as n of them reach the
    batcher; its places come back when it is answered. `arriving` counts the images admitted that have not
    reached the batcher yet (bodies being read, images being decoded): the batcher waits for others only while
    some are on their way. `on_left(...)` is called when a request ends with images that never arrived."""

    def __init__(self, limit: int, on_left: Callable[[], None] | None = None):
        self.limit, self.taken, self.arriving, self.on_left = limit, 0, 0, on_left

    @contextlib.contextmanager
    def for_request(self) -> Iterator[RequestPlaces]:
        places = RequestPlaces(self)
        try:
            yield places
        finally:
            self.taken -= places.held
            if places.held > places.delivered:
                self.arriving -= places.held - places.delivered
                if self.on_left is not None:
                    self.on_left()


class RequestPlaces:
    """One request's places: `places(images)` takes them for its count so far (TooManyImages beyond the limit,
    QueueFull when the other requests leave no room), `places.arrived(n)` marks n of them handed to the batcher."""

    def __init__(self, pool: ImagePlaces):
        self.pool, self.held, self.delivered = pool, 0, 0

    def __call__(self, images: int) -> None:
        pool = self.pool
        if images > pool.limit:
            raise TooManyImages(f"{images} images in one request: at most {pool.limit} (--max-queue).")
        if images > self.held:
            if pool.taken + images - self.held > pool.limit:
                others = pool.taken - self.held
                raise QueueFull(f"{others} images are under way (--max-queue {pool.limit}): retry shortly.")
            pool.taken += images - self.held
            pool.arriving += images - self.held
            self.held = images

    def arrived(self, images: int) -> None:
        images = min(images, self.held - self.delivered)
        self.delivered += images
        self.pool.arriving -= images


class DecodeBudget:
    """Decodes in worker threads while their images' decoded bytes fit `budget` (an image larger than the whole
    budget decodes alone). Turns are first come, first served, and a request asks for its next image's turn
    only once the last one started, so a request of 60 huge images and a small one take turns."""

    def __init__(self, budget: int):
        self.budget, self.in_use = budget, 0
        self._waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()
        self._threads = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="decode")

    async def start(self, cost: int, function: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Wait for a turn for `cost` bytes, then start `function(*args)` in a thread: its future. The bytes stay
        counted until the thread is done, even when whoever waits for it gives up."""
        cost = min(cost, self.budget)
        await self._turn(cost)
        loop = asyncio.get_running_loop()
        running = self._threads.submit(function, *args)
        running.add_done_callback(lambda _: self._release_from_thread(loop, cost))
        return asyncio.wrap_future(running)

    def _release_from_thread(self, loop: asyncio.AbstractEventLoop, cost: int) -> None:
        with contextlib.suppress(RuntimeError):  # the server has stopped: nothing is left to wake
            loop.call_soon_threadsafe(self._release, cost)

    async def _turn(self, cost: int) -> None:
        if not self._waiting and self.in_use + cost <= self.budget:
            self.in_use += cost
            return
        entry = (cost, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():  # given its turn as it was cancelled
                self._release(cost)
            elif entry in self._waiting:
                self._waiting.remove(entry)
                self._wake()
            raise

    def _release(self, cost: int) -> None:
        self.in_use -= cost
        self._wake()

    def _wake(self) -> None:
        while self._waiting and (self._waiting[0][1].done() or self.in_use + self._waiting[0][0] <= self.budget):
            cost, turn = self._waiting.popleft()
            if not turn.done():
                self.in_use += cost
                turn.set_result(None)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
