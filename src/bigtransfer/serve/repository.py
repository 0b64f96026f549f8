"""The models a server serves, by name and version, each version with its own batcher (`ModelService`) — and
the repository extension's operations (index, load, unload) that REST and gRPC both expose, as Triton's
repository of `REPO/<name>/<version>/` is served.

A model is known by name with the sources of its versions; it is loaded (every version: its weights read, its
service started) or not. A request names a model and optionally a version; without one it gets the highest
version loaded, as Triton's default version policy does.

As Triton's `--model-control-mode none` (the default), every model is loaded before serving starts and load and
unload are refused (503); `explicit` allows them: a load reads the model's folder again (`find`: new versions, a
model added since; one already loaded keeps answering until its new versions are ready), an unload lets the
requests under way finish.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from .batching import BatchRecord
from .model import ServedModel
from .service import Limits, ModelService, ServeError

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"  # Triton's model states


@dataclasses.dataclass
class ModelEntry:
    """A model the repository knows: the source of each version, and whether it is loaded."""

    name: str
    versions: dict[str, Any]  # version → what `ServedModel` loads (a path or zoo name), or a ServedModel itself
    state: str = UNAVAILABLE
    reason: str = ""  # why it is not ready (unloaded, or its load failed)
    services: dict[str, ModelService] = dataclasses.field(default_factory=dict)


def version_order(version: str) -> tuple[int, int | str]:
    """Versions in Triton's order: numbers by value, before any other name."""
    return (0, int(version)) if version.isdigit() else (1, version)


class Repository:
    """Models by name and version. `load_model(source, name)` reads one version's model (a `ServedModel`)."""

    def __init__(
        self,
        limits: Limits = Limits(),
        load_model: Callable[[Any, str], ServedModel] | None = None,
        on_batch: Callable[[ModelService, BatchRecord], None] | None = None,
        *,
        explicit: bool = False,
        find: Callable[[], dict[str, dict[str, Any]]] | None = None,
    ):
        """`explicit`: load and unload at run time (Triton's --model-control-mode explicit); `find`: the models of
        the repository's folder as they are now ({name: {version: source}}), which a load reads again."""
        self.limits, self.on_batch = limits, on_batch
        self.explicit, self.find = explicit, find
        self.load_model = load_model or (lambda source, name: ServedModel(source, name=name))
        self.entries: dict[str, ModelEntry] = {}
        self.started = False
        self._changing = asyncio.Lock()

    @classmethod
    def of(cls, model: ServedModel, limits: Limits = Limits()) -> Repository:
        """A repository of one model already loaded, as version 1."""
        repository = cls(limits)
        repository.add(model.name, {"1": model})
        repository.load_now(model.name)
        return repository

    # -- what it holds ----------------------------------------------------------------------------------------------
    def add(self, name: str, versions: dict[str, Any]) -> None:
        if name in self.entries:
            raise ValueError(f"Two models are named {name!r}: give each model in the repository its own name.")
        self.entries[name] = ModelEntry(name, dict(versions), reason="not loaded")

    def entry(self, name: str) -> ModelEntry:
        if name not in self.entries:
            known = ", ".join(repr(known) for known in sorted(self.entries)) or "none"
            raise ServeError(404, f"Unknown model {name!r}: this server has {known}.")
        return self.entries[name]

    def get(self, name: str, version: str | None = None) -> ModelService:
        """The loaded service of `name` at `version` (default: its highest version loaded); 404 for a model or
        version the repository does not have, 503 for one that is not loaded."""
        entry = self.entry(name)
        if version not in (None, "") and version not in entry.versions:
            raise ServeError(
                404,
                f"Model {name!r} has no version {version}: it has {', '.join(sorted(entry.versions, key=version_order))}.",
            )
        if not entry.services:  # a model being reloaded answers from its loaded versions meanwhile
            raise ServeError(
                503, f"Model {name!r} is not ready ({entry.reason or entry.state.lower()}): load it with "
                f"POST /v2/repository/models/{name}/load.",
            )  # fmt: skip
        if version in (None, ""):
            version = max(entry.services, key=version_order)
        return entry.services[version]

    def versions(self, name: str) -> list[str]:
        """The versions of `name` that are loaded, in Triton's order."""
        return sorted(self.entry(name).services, key=version_order)

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """KServe v2 model metadata of `name` at `version` (default: the highest), listing every version loaded."""
        return {**self.get(name, version).metadata(), "versions": self.versions(name)}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether `name` (at `version`) answers requests now; 404 for a model or version the repository lacks."""
        try:
            return self.get(name, version).ready
        except ServeError as error:
            if error.status != 503:
                raise
            return False

    def services(self) -> list[ModelService]:
        return [service for entry in self.entries.values() for service in entry.services.values()]

    @property
    def ready(self) -> bool:
        """Serving started and no model is on its way in or out (a model reloading answers meanwhile)."""
        return self.started and all(
            entry.state in (READY, UNAVAILABLE) or entry.services for entry in self.entries.values()
        )

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository extension's index: one row per model version (name, version, state, reason)."""
        rows = []
        for name in sorted(self.entries):
            entry = self.entries[name]
            if ready_only and entry.state != READY:
                continue
            for version in sorted(entry.versions, key=version_order):
                rows.append({"name": name, "version": version, "state": entry.state, "reason": entry.reason})
        return rows

    # -- loading ------------------------------------------------------------------------------------------------------
    def load_now(self, name: str) -> None:
        """Read `name`'s every version before serving starts (errors raise: a server does not start broken)."""
        entry = self.entry(name)
        entry.services = self._read(name, entry.versions)
        entry.state, entry.reason = READY, ""

    def _read(self, name: str, versions: dict[str, Any]) -> dict[str, ModelService]:
        services = {}
        for version, source in versions.items():
            model = source if isinstance(source, ServedModel) else self.load_model(source, name)
            services[version] = ModelService(model, self.limits, version, self._batched)
        return services

    def _batched(self, service: ModelService, record: BatchRecord) -> None:
        if self.on_batch is not None:
            self.on_batch(service, record)

    async def start(self) -> None:
        for service in self.services():
            await service.start()
        self.started = True

    async def stop(self) -> None:
        self.started = False
        await asyncio.gather(*(service.stop() for service in self.services()))

    async def load(self, name: str) -> None:
        """(Re)load `name`: its versions read in a thread while the others serve on; a model already loaded keeps
        answering until the new one is ready. A failure leaves it unavailable, with the reason (400), or a model
        already loaded as it was."""
        self._check_control()
        async with self._changing:
            entry, versions = self._found(name)
            previous, entry.state = entry.services, LOADING
            try:
                services = await asyncio.to_thread(self._read, name, versions)
                for service in services.values():
                    await service.start()
            except (OSError, ValueError, ImportError) as error:
                entry.state, entry.reason = (READY, "") if previous else (UNAVAILABLE, f"load failed: {error}")
                raise ServeError(400, f"Failed to load model {name!r}: {error}") from None
            entry.versions, entry.services, entry.state, entry.reason = dict(versions), services, READY, ""
            for service in previous.values():
                await service.stop()

    async def unload(self, name: str) -> None:
        """Stop serving `name`: new requests get 503; those under way finish. Unloading a model that is not loaded
        succeeds, as in Triton."""
        self._check_control()
        entry = self.entry(name)
        async with self._changing:
            previous, entry.state = entry.services, UNLOADING
            entry.services = {}
            for service in previous.values():
                await service.stop()
            entry.state, entry.reason = UNAVAILABLE, "unloaded"

    def _check_control(self) -> None:
        if not self.explicit:
            raise ServeError(
                503, "Loading and unloading models is off (--model-control-mode none, as in Triton): start the server "
                "with --model-control-mode explicit to load and unload models while it runs.",
            )  # fmt: skip

    def _found(self, name: str) -> tuple[ModelEntry, dict[str, Any]]:
        """`name`'s entry (a model added to the folder since included) and its versions as the folder has them
        now; without a folder, those it was given."""
        if self.find is None:
            entry = self.entry(name)
            return entry, entry.versions
        try:
            versions = self.find().get(name)
        except (OSError, ValueError) as error:
            raise ServeError(400, f"Failed to load model {name!r}: {error}") from None
        if versions is None:
            known = ", ".join(repr(known) for known in sorted(self.entries)) or "none"
            raise ServeError(400, f"Failed to load model {name!r}: the repository has no such model (it has {known}).")
        if name not in self.entries:
            self.add(name, versions)
        return self.entries[name], versions
