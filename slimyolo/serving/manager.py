"""Loading, unloading and hot-reloading model versions from a repository.

Each model name serves one version at a time. A request takes a :class:`Lease` on the version it
runs on; swapping in another version replaces the served one atomically (new requests get the
new version at once), and the old one is closed when its last lease is released, so requests in
flight finish on the version they started on.

Which version is served, per model:

- the newest in the repository (:func:`slimyolo.serving.repository.version_key`), checked at
  start and every ``poll_seconds``: a new version appearing is loaded and swapped in; a model
  whose versions all disappear is unloaded;
- ``load(name, version)`` loads that version and keeps it (a rollback) until a version newer
  than any the repository held at that moment appears; ``load(name)`` returns to the newest;
- ``unload(name)`` stops serving the model until ``load`` is called for it again;
- a version that fails to load (an unreadable IR, a digest mismatch) is recorded as FAILED
  with the reason and not retried by the poll; the version served before keeps serving.
  A storage outage is not a failure of the version: the next poll retries.

The server is *ready* when it can answer for at least one model: the repository has been
scanned, every model found in that first scan has been loaded or has failed to load (a broken
model must not keep a whole deployment unready), and at least one version is loaded (of a model
of its own: a sweep's temporary model, :func:`~slimyolo.serving.repository.is_temporary`, loaded
for a benchmark, never draws traffic to a replica that has nothing else). It turns
unready again when its last model leaves the repository or is unloaded, and ready when one is
loaded again; ``start(on_ready)`` reports each change, for the health service.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from slimyolo.errors import NotFoundError, SlimYoloError, UnavailableError
from slimyolo.infer.meta import ModelMeta
from slimyolo.serving.metrics import InferenceMetrics, model_label
from slimyolo.serving.repository import Repository, is_temporary, newest

log = logging.getLogger(__name__)

INITIAL_RETRY_SECONDS = 5.0  # between scans while the first one fails (the store is not up yet)


class Loaded(Protocol):
    """What the manager needs of a loaded version (:class:`slimyolo.serving.model.ServedModel`)."""

    name: str
    version: str
    meta: ModelMeta

    def close(self) -> None: ...


class ModelState(enum.Enum):
    AVAILABLE = "available"  # in the repository, not loaded
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"  # replaced or unloaded, still finishing requests in flight
    FAILED = "failed"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    state: ModelState
    meta: ModelMeta | None = None  # for loaded versions
    reason: str = ""  # why it failed (FAILED)


class _Slot:
    """A loaded version and the requests holding it."""

    def __init__(self, model: Loaded, path: Path) -> None:
        self.model, self.path = model, path
        self.refs = 0
        self.retired = False


class Lease:
    """A request's hold on a loaded version; release it (or use ``with``) when the request is done."""

    def __init__(self, manager: ModelManager, slot: _Slot) -> None:
        self._manager, self._slot = manager, slot
        self._released = False
        self.model = slot.model

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self._slot)

    def __enter__(self) -> Loaded:
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.release()


Loader = Callable[[str, str, Path], Loaded]


class ModelManager:
    """The model versions served from ``repository`` (see the module docstring).

    ``loader(name, version, folder)`` compiles a version (:class:`~slimyolo.serving.model.ServedModel`).
    """

    def __init__(self, repository: Repository, loader: Loader, poll_seconds: float = 10.0,
                 metrics: InferenceMetrics | None = None) -> None:
        self.repository, self.loader, self.poll_seconds, self.metrics = repository, loader, poll_seconds, metrics
        self._lock = threading.Lock()  # the tables below
        self._load_lock = threading.Lock()  # one scan-and-load at a time
        self._slots: dict[str, _Slot] = {}
        self._retiring: list[_Slot] = []
        self._available: dict[str, list[str]] = {}
        self._loading: dict[str, str] = {}
        self._failed: dict[tuple[str, str], str] = {}
        self._pins: dict[str, tuple[str, str | None]] = {}  # name → (version, newest when pinned)
        self._held: set[str] = set()  # unloaded on request: not reloaded by the poll
        self._scanned = threading.Event()  # the first scan is done
        self._notify_lock = threading.Lock()  # readiness changes are reported in order
        self._reported: bool | None = None
        self._on_ready: Callable[[bool], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if metrics is not None:
            metrics.models_loaded.set_function(lambda: len(self._slots))

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, on_ready: Callable[[bool], None] | None = None) -> None:
        """Scan and load in the background now, then every ``poll_seconds``; ``on_ready(ready)`` on each change.

        ``on_ready(False)`` comes at once (nothing is loaded yet), ``on_ready(True)`` once ready.
        """
        self._on_ready = on_ready
        self._report()

        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.poll()
                    break
                except SlimYoloError as exc:
                    log.warning("cannot scan the model repository %s (retrying in %gs): %s",
                                self.repository.uri, self.poll_seconds or INITIAL_RETRY_SECONDS, exc)
                self._stop.wait(self.poll_seconds or INITIAL_RETRY_SECONDS)
            if self._stop.is_set():
                return
            self._scanned.set()
            self._report()
            while self.poll_seconds and not self._stop.wait(self.poll_seconds):
                try:
                    self.poll()
                except SlimYoloError as exc:
                    log.warning("cannot scan the model repository %s: %s", self.repository.uri, exc)

        self._thread = threading.Thread(target=run, name="model-repository", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        """Whether the server can answer for at least one model (see the module docstring)."""
        with self._lock:
            return self._scanned.is_set() and any(not is_temporary(name) for name in self._slots)

    def _report(self) -> None:
        """Tell ``on_ready`` if readiness changed (after every change of what is served)."""
        with self._notify_lock:
            ready = self.ready
            if ready != self._reported and self._on_ready is not None:
                self._reported = ready
                self._on_ready(ready)

    def close(self) -> None:
        """Stop polling and release every loaded version (requests in flight keep theirs until done)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._load_lock, self._lock:
            slots, self._slots = list(self._slots.values()), {}
            idle = [s for s in slots if self._retire(s)]
        for slot in idle:
            self._close(slot)
        self.repository.close()

    # -- requests -------------------------------------------------------------------------------

    def acquire(self, name: str, version: str = "") -> Lease:
        """A lease on the served version of ``name`` (``version``: only if it is that one)."""
        with self._lock:
            slot = self._slots.get(name)
            if slot is None and self._stop.is_set():  # closed: the server drains, another replica answers
                raise UnavailableError(f"model {name!r}: this replica is shutting down; send the call again")
            if slot is None:
                state = "is loading" if name in self._loading else (
                    "is in the repository but not loaded (LoadModel loads it)" if name in self._available
                    else "is not in the model repository")
                raise NotFoundError(f"model {name!r} {state}")
            if version and slot.model.version != version:
                raise NotFoundError(f"model {name!r} version {version!r} is not loaded (serving version "
                                    f"{slot.model.version})")
            slot.refs += 1
            return Lease(self, slot)

    def is_ready(self, name: str, version: str = "") -> bool:
        """Whether ``name`` (``version``: that one) is served; NotFoundError when the repository has no such model.

        A model of the repository that is not loaded (yet, or any more, or that failed to load), or a
        version of it not served (yet: a client may wait for one), is not ready; a model that is neither in
        the repository nor served is unknown, as for :meth:`acquire`.
        """
        with self._lock:
            slot = self._slots.get(name)
            if slot is None and name not in self._available:
                raise NotFoundError(f"model {name!r} is not in the model repository")
            return slot is not None and (not version or slot.model.version == version)

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model of the repository (or served): a metric label, not a client's string."""
        with self._lock:
            return name in self._slots or name in self._available

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.refs -= 1
            idle = slot.retired and slot.refs == 0
            if idle:
                self._retiring.remove(slot)
        if idle:
            self._close(slot)

    # -- what is served ---------------------------------------------------------------------------

    def models(self, include_repository: bool = False) -> list[ModelInfo]:
        """Loaded, loading, finishing and failed versions; with ``include_repository`` the others too."""
        with self._lock:
            infos = [ModelInfo(s.model.name, s.model.version, ModelState.READY, s.model.meta)
                     for s in self._slots.values()]
            infos += [ModelInfo(s.model.name, s.model.version, ModelState.UNLOADING, s.model.meta)
                      for s in self._retiring]
            infos += [ModelInfo(n, v, ModelState.LOADING) for n, v in self._loading.items()]
            infos += [ModelInfo(n, v, ModelState.FAILED, reason=r) for (n, v), r in self._failed.items()]
            if include_repository:
                seen = {(i.name, i.version) for i in infos}
                infos += [ModelInfo(n, v, ModelState.AVAILABLE) for n, versions in self._available.items()
                          for v in versions if (n, v) not in seen]
        return sorted(infos, key=lambda i: (i.name, i.version, i.state.value))

    def poll(self) -> None:
        """Scan the repository once and load, swap or unload to follow it."""
        with self._load_lock:
            available = self.repository.scan()
            with self._lock:
                self._available = available
                self._failed = {k: r for k, r in self._failed.items() if k[1] in available.get(k[0], ())}
                plan = [(name, target) for name in sorted(set(available) | set(self._slots))
                        if (target := self._target(name, available.get(name, []))) != self._served(name)]
            for name, target in plan:
                if target is None:
                    log.info("model %s left the repository: unloading it", name)
                    self._swap(name, None)
                elif (name, target) not in self._failed:
                    try:
                        self._load(name, target)
                    except UnavailableError as exc:
                        log.warning("cannot load model %s version %s now (the next scan retries): %s",
                                    name, target, exc)
                    except SlimYoloError:
                        pass  # recorded as FAILED by _load

    def load(self, name: str, version: str = "") -> ModelInfo:
        """Serve ``version`` of ``name`` (the newest when empty), from a fresh scan of the repository."""
        with self._load_lock:
            available = self.repository.scan()
            with self._lock:
                self._available = available
            versions = available.get(name)
            if not versions:
                raise NotFoundError(f"model {name!r} is not in the model repository {self.repository.uri}")
            if version and version not in versions:
                raise NotFoundError(f"model {name!r} has no version {version!r} in the repository "
                                    f"(versions: {', '.join(versions)})")
            latest = newest(versions)
            target = version or latest
            assert target is not None
            with self._lock:
                self._held.discard(name)
                self._failed.pop((name, target), None)
                if version:
                    self._pins[name] = (version, latest)
                else:
                    self._pins.pop(name, None)
            if self._served(name) != target:
                self._load(name, target)
        with self._lock:
            slot = self._slots[name]
            return ModelInfo(name, slot.model.version, ModelState.READY, slot.model.meta)

    def unload(self, name: str, version: str = "") -> list[ModelInfo]:
        """Stop serving ``name`` (only if it serves ``version``, when given) until ``load`` is called again."""
        with self._load_lock:
            with self._lock:
                slot = self._slots.get(name)
                if slot is None or (version and slot.model.version != version):
                    what = f"model {name!r}" + (f" version {version!r}" if version else "")
                    raise NotFoundError(f"{what} is not loaded")
                self._held.add(name)
                self._pins.pop(name, None)
            busy = self._swap(name, None)
        state = ModelState.UNLOADING if busy else ModelState.AVAILABLE
        return [ModelInfo(name, slot.model.version, state, slot.model.meta)]

    # -- internals --------------------------------------------------------------------------------

    def _served(self, name: str) -> str | None:
        slot = self._slots.get(name)
        return slot.model.version if slot is not None else None

    def _target(self, name: str, versions: list[str]) -> str | None:
        """The version ``name`` should serve given the repository's ``versions`` (under the lock)."""
        if is_temporary(name):  # a sweep's point: served only where its meter loaded it, until its tree goes
            served = self._served(name)
            if served not in versions:
                self._held.discard(name)
                self._pins.pop(name, None)
                return None
            return served
        if name in self._held:
            return self._served(name)
        latest = newest(versions)
        pin = self._pins.get(name)
        if pin is not None and (pin[0] not in versions or pin[1] != latest):
            del self._pins[name]  # the pinned version went away, or a newer one came: follow the newest
            pin = None
        return pin[0] if pin is not None else latest

    def _load(self, name: str, version: str) -> None:
        """Fetch and compile a version, then swap it in (under the load lock)."""
        with self._lock:
            self._loading[name] = version
        log.info("loading model %s version %s from %s", name, version, self.repository.uri)
        try:
            path = self.repository.fetch(name, version)
            try:
                model = self.loader(name, version, path)
            except BaseException:
                self.repository.release(path)
                raise
        except UnavailableError:
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, SlimYoloError) else f"internal error ({type(exc).__name__}: {exc})"
            if not isinstance(exc, SlimYoloError):
                log.exception("loading model %s version %s failed", name, version)
            with self._lock:
                self._failed[(name, version)] = reason
            self._count_load(name, "failed")
            log.error("model %s version %s failed to load: %s", name, version, reason)
            if isinstance(exc, SlimYoloError):
                raise
            raise SlimYoloError(f"model {name!r} version {version!r} failed to load: {reason}") from exc
        finally:
            with self._lock:
                self._loading.pop(name, None)
        self._count_load(name, "ok")
        self._swap(name, _Slot(model, path))
        log.info("model %s version %s is serving", name, version)

    def _count_load(self, name: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.loads.labels(model_label(name), result).inc()

    def _swap(self, name: str, slot: _Slot | None) -> bool:
        """Serve ``slot`` for ``name`` (None: nothing); True if the old version still has requests."""
        with self._lock:
            old = self._slots.pop(name, None)
            if slot is not None:
                self._slots[name] = slot
            idle = old is not None and self._retire(old)
            busy = old is not None and not idle
        if idle:
            self._close(old)
        if slot is None and self.metrics is not None:
            self.metrics.forget(name)
        self._report()
        return busy

    def _retire(self, slot: _Slot) -> bool:
        """Mark a slot replaced (under the lock); True if nothing holds it and it can close now."""
        slot.retired = True
        if slot.refs == 0:
            return True
        self._retiring.append(slot)
        return False

    def _close(self, slot: _Slot) -> None:
        try:
            slot.model.close()
        finally:
            self.repository.release(slot.path)
