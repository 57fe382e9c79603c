"""Measured OpenVINO speed of a sweep point: the cost the sweep's ``fps`` objective minimises.

BFLOPs stop predicting CPU speed once pruning has made the layers thin (they move as many
activation bytes per FLOP that the CPU waits on memory; see BENCHMARKS.md), so the sweep can
choose its point by frames per second measured on the CPU that will run the model. Each point
is converted the fastest way that exists (:func:`slimyolo.convert.convert` with
``via="torch"``: PyTorch → IR, checked against PyTorch like every conversion; INT8 with NNCF on
a few synthetic calibration images, which set the quantization ranges but not the speed),
compiled with the throughput hint, and timed on inference alone in ``repeats`` short runs: the
best run counts, because on a shared machine other work only ever slows a run down.

FPS depends on the architecture, not on the weights' values, so measured points are cached by
the sha256 of their cfg (which holds the input size) and the precision: the fine steps of a
sweep often give the same pruned widths twice.

:class:`FpsMeter` times the points on the machine the pruner runs on; :class:`RemoteFpsMeter`
on the inference service that will serve the model (its BenchmarkModel RPC), which in a
cluster is often another kind of CPU. Both convert the point the same way
(:func:`convert_point`) and cache alike, and both say where they measured (``measured_on``).

Both return *frames* per second. With ``mosaic`` k ≥ 2 they time the point as the inference
service runs video streams: one inference of the IR at k times its input size serves k×k frames
(the 4-stream 2x2 mosaic), so the figure is k² times the inferences per second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimyolo import vocab
from slimyolo.cpuinfo import cpu_info, describe
from slimyolo.darknet.model import Darknet
from slimyolo.errors import NotFoundError, ResourceExhausted, SlimYoloError

if TYPE_CHECKING:
    from slimyolo.rpc.inference_client import InferenceClient
    from slimyolo.store import Store

log = logging.getLogger(__name__)

CALIB_IMAGES = 8


def convert_point(model: Darknet, precision: str, work: Path) -> Path:
    """``model`` as an OpenVINO IR version folder under ``work`` (``work/models/point/1``), the way the
    meters time it: PyTorch → IR (:func:`slimyolo.convert.convert` ``via="torch"``), checked against PyTorch
    on one image; an INT8 IR (NNCF, :data:`CALIB_IMAGES` synthetic calibration images) for ``precision``
    ``int8``, else an f32 IR (the execution precision is the runtime's business)."""
    from slimyolo.convert import convert

    model.cfg.write(work / "point.cfg")
    model.save_darknet_weights(work / "point.weights")
    return convert(work / "point.cfg", work / "point.weights", work / "models", name="point", version=1,
                   via="torch", precision="int8" if precision == "int8" else "fp32",
                   calib_images=CALIB_IMAGES, parity_images=1).path


class _PointMeter:
    """What both meters share: their arguments checked, and figures cached by cfg digest and precision.

    A subclass is a dataclass with ``precision``, ``seconds``, ``repeats``, ``cache`` and ``mosaic`` fields
    and a ``measure(model) -> frames per second``.
    """

    precision: str
    seconds: float
    repeats: int
    cache: dict[str, float]
    mosaic: int

    def _check(self) -> None:
        self.precision = vocab.choose(self.precision, vocab.FPS_PRECISIONS, "precision")
        if self.seconds <= 0 or self.repeats < 1:
            raise SlimYoloError(f"FPS measurement needs positive seconds and at least one repeat, got "
                                f"{self.seconds} s x {self.repeats}")
        if not isinstance(self.mosaic, int) or self.mosaic < 0:
            raise SlimYoloError(f"mosaic: K of a KxK mosaic (0 or 1: none), got {self.mosaic!r}")
        self.mosaic = max(self.mosaic, 1)
        import importlib.util

        needed = ("openvino", "nncf") if self.precision == "int8" else ("openvino",)
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:  # the pruner image is the trainer's (.[train]): say so now, not after the first evaluation
            raise SlimYoloError(f"the fps objective converts and times every point with OpenVINO, and "
                                f"{', '.join(missing)} is not installed here: install slimyolo[convert] or use "
                                "the bflops objective")

    def key(self, model: Darknet) -> str:
        grid = f"-{self.mosaic}x{self.mosaic}" if self.mosaic > 1 else ""
        return f"{hashlib.sha256(model.cfg.to_text().encode()).hexdigest()}-{self.precision}{grid}"

    def _how(self) -> str:
        """The measured inputs, for :meth:`note`: the IR, and the mosaic if any."""
        grid = f", as the {self.mosaic}x{self.mosaic} mosaic ({self.mosaic ** 2} frames an inference)" \
            if self.mosaic > 1 else ""
        return f"OpenVINO {self.precision} IR (via PyTorch){grid}"

    def __call__(self, model: Darknet) -> float:
        key = self.key(model)
        if key not in self.cache:
            self.cache[key] = self.measure(model)
        return self.cache[key]

    def measure(self, model: Darknet) -> float:
        raise NotImplementedError


@dataclass
class FpsMeter(_PointMeter):
    """Callable ``Darknet -> FPS`` (see the module docstring); ``cache`` maps cfg digest → FPS."""

    precision: str = "f32"
    seconds: float = 1.0
    repeats: int = 3
    cache: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=cpu_info)
    mosaic: int = 0

    def __post_init__(self) -> None:
        self._check()

    def measure(self, model: Darknet) -> float:
        """Convert ``model`` to an IR in a scratch folder and return its best inference-only frames per second."""
        from slimyolo.infer.bench import bench_infer, sample_tensor
        from slimyolo.infer.engine import Engine, read_ir_meta

        k = self.mosaic
        with tempfile.TemporaryDirectory(prefix="slimyolo-fps-") as tmp:
            ir = convert_point(model, self.precision, Path(tmp))
            size = None
            if k > 1:
                spec = read_ir_meta(ir).input
                size = (k * spec.height, k * spec.width)
            engine = Engine(ir, hint="throughput", precision=None if self.precision == "int8" else self.precision,
                            input_size=size)
            tensor = sample_tensor(engine)
            runs = [bench_infer(engine, tensor, self.seconds)["fps"] for _ in range(self.repeats)]
            engine.wait()
        return max(runs) * k * k

    @property
    def measured_on(self) -> str:
        """Where the figures were measured: this machine (its host name) and its CPU."""
        return f"local ({socket.gethostname()}): {describe(self.cpu)}"

    def note(self) -> str:
        """How the figures were measured, and on which CPU."""
        return (f"{self._how()}, throughput hint, inference only, best of "
                f"{self.repeats} x {self.seconds:g} s, on {describe(self.cpu)}")


@dataclass
class RemoteFpsMeter(_PointMeter):
    """Callable ``Darknet -> FPS`` measured by the inference service at ``target``, on its CPU.

    Each point (not in ``cache`` already: the same cfg-digest cache as :class:`FpsMeter`) is converted
    here (:func:`convert_point`, the IR of ``precision``), uploaded into the artifact store as the
    model version ``<repository>/<name>/<n>`` (``name`` is ``_sweep-<12 hex digits>``, one per
    meter, the reserved prefix of :data:`slimyolo.serving.repository.TEMPORARY_PREFIX`: no user's
    model is touched; ``n`` counts the points measured), loaded (LoadModel), timed server-side
    ``repeats`` times for ``seconds`` (BenchmarkModel, inference only: neither the network nor
    this process counts; the best run counts), unloaded (UnloadModel), and its tree deleted from
    the store. Unloading and deleting happen whatever failed before them, so no temporary model
    stays loaded or stored (a service that polls its repository would also unload a version
    whose tree is gone).

    ``target`` is ``HOST:PORT``, ``dns:///NAME:PORT`` or ``ipv4:A:P,...``; the calls of one measurement
    all go to one replica (the first that connects: it loads, times and unloads the model); point
    the meter at one replica or at a Service of alike nodes (figures from CPUs of different models
    are refused, since they cannot be compared).

    The store must be the one the service reads its model repository from: ``store`` (default:
    :func:`slimyolo.store.open_store`, i.e. this process's ``SLIMYOLO_STORE`` and ``SLIMYOLO_S3_*``
    settings) and ``repository`` (the key prefix; default: :func:`slimyolo.serving.repository.store_prefix`:
    ``SLIMYOLO_MODEL_REPOSITORY`` or ``models``), the same configuration the service has. When the
    service cannot see the uploaded model, the first measurement fails saying so.

    The service compiles models with its own settings: ``precision`` ``f32`` or ``bf16`` must be the
    execution precision it runs at (its ``--precision`` / ``SLIMYOLO_INFERENCE_PRECISION``, else its
    CPU's default), or the measurement fails naming both; ``int8`` uploads the INT8 IR. With ``mosaic``
    k ≥ 2 the service times its k×k mosaic engine of the point, which it compiles only up to its own
    ``--mosaic`` (``SLIMYOLO_INFERENCE_MOSAIC``, 2x2 by default). A benchmark already running on the
    service (another sweep's, a user's) is waited for, up to ``wait_seconds``.
    After the first measurement ``cpu`` (the *server's* :func:`~slimyolo.cpuinfo.cpu_info`), ``host``
    (the replica that answered) and :attr:`measured_on` describe where the figures come from;
    ``last`` holds the last BenchmarkModel answer (:func:`slimyolo.rpc.inference_client.benchmark_dict`).
    """

    target: str = ""
    precision: str = "f32"
    seconds: float = 1.0
    repeats: int = 3
    cache: dict[str, float] = field(default_factory=dict)
    mosaic: int = 0
    store: Store | None = None
    repository: str | None = None
    wait_seconds: float = 120.0
    cpu: dict[str, Any] | None = field(default=None, init=False)
    host: str = field(default="", init=False)
    last: dict[str, Any] | None = field(default=None, init=False, repr=False)
    name: str = field(default="", init=False)
    points: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        from slimyolo.rpc.inference_client import InferenceClient
        from slimyolo.serving.repository import TEMPORARY_PREFIX, store_prefix
        from slimyolo.store import open_store

        if not self.target:
            raise SlimYoloError("measure on: give the inference service to measure on (HOST:PORT, dns:///NAME:PORT "
                                "or ipv4:ADDRESS:PORT)")
        self._check()
        if self.seconds > vocab.MAX_BENCHMARK_SECONDS:
            raise SlimYoloError(f"the inference service benchmarks for at most "
                                f"{vocab.MAX_BENCHMARK_SECONDS:g} seconds at a time, got {self.seconds:g}")
        self.repository = store_prefix(self.repository, os.environ)
        self.store = self.store or open_store()
        self.name = f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:12]}"
        InferenceClient(self.target).close()  # nothing answers there: say so now, not after the first evaluation

    def measure(self, model: Darknet) -> float:
        """Convert ``model``, have the service time it, clean up (see the class docstring); its best FPS."""
        from slimyolo.rpc.inference_client import InferenceClient

        self.points += 1
        with tempfile.TemporaryDirectory(prefix="slimyolo-fps-") as tmp:
            ir = convert_point(model, self.precision, Path(tmp))
            with InferenceClient(self.target, pinned=True) as client:
                return max(self._measure_uploaded(client, ir, str(self.points)))

    def _measure_uploaded(self, client: InferenceClient, ir: Path, version: str) -> list[float]:
        """Upload, load and time one point's IR, then (whatever happened) unload and delete it; each run's FPS."""
        assert self.store is not None
        prefix = f"{self.repository}/{self.name}/{version}"
        loaded = False
        try:
            self.store.put_tree(prefix, ir)
            loaded = True  # from here on unload, even when the load failed half-way (a deadline, Ctrl-C)
            try:
                client.load_model(self.name, version)
            except NotFoundError as exc:
                raise SlimYoloError(
                    f"the inference service at {self.target} cannot see the model uploaded for measuring "
                    f"({self.store.uri_of(prefix)}): the pruner and the inference service must share the store "
                    f"(the same SLIMYOLO_STORE and, for S3, SLIMYOLO_S3_* settings) and the model repository "
                    f"prefix (SLIMYOLO_MODEL_REPOSITORY, here {self.repository!r}) ({exc})") from exc
            return [self._benchmark(client, version) for _ in range(self.repeats)]
        finally:
            if loaded:
                try:
                    client.unload_model(self.name, version)
                except NotFoundError:
                    pass  # it never got loaded
                except SlimYoloError as exc:
                    log.warning("could not unload the temporary model %s version %s from %s: %s", self.name,
                                version, self.target, exc)
            self._delete(prefix)

    def _benchmark(self, client: InferenceClient, version: str) -> float:
        """One BenchmarkModel run (waiting out another benchmark on the service); checks what ran where."""
        deadline = time.monotonic() + self.wait_seconds
        pause = 0.5
        while True:
            try:
                answer = client.benchmark(self.name, version, self.seconds, self.mosaic)
                break
            except ResourceExhausted:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(2 * pause, 5.0)
        if self.precision != "int8" and answer["execution_precision"] != self.precision:
            raise SlimYoloError(f"the inference service at {self.target} runs models in "
                                f"{answer['execution_precision']} (its --precision / SLIMYOLO_INFERENCE_PRECISION, "
                                f"else its CPU's default), not {self.precision}: measure at precision "
                                f"{answer['execution_precision']}, or set the service's precision to {self.precision}")
        if self.cpu is not None and answer["cpu"]["cpu"] != self.cpu["cpu"]:
            raise SlimYoloError(f"the inference service at {self.target} answered from CPUs of different models "
                                f"({self.cpu['cpu']} on {self.host}, then {answer['cpu']['cpu']} on {answer['host']}): "
                                "their FPS cannot be compared; measure on one replica (its address) or on a "
                                "Service whose nodes are alike")
        self.cpu, self.host, self.last = answer["cpu"], answer["host"], answer
        return answer["frames_per_second"]

    def _delete(self, prefix: str) -> None:
        assert self.store is not None
        try:
            self.store.delete_tree(prefix)
        except NotFoundError:
            leftover = self.store.list_keys(prefix)
            if leftover:  # an upload that failed half-way: no SHA256SUMS, so no reader lists or loads it
                log.warning("the incomplete upload %s is left in the store (%d files)", self.store.uri_of(prefix),
                            len(leftover))
        except SlimYoloError as exc:
            log.warning("could not delete the temporary model %s from the store: %s", self.store.uri_of(prefix), exc)

    @property
    def measured_on(self) -> str:
        """Where the figures were measured: the service (and the replica that answered) and its CPU."""
        if self.cpu is None:
            return f"inference service {self.target} (nothing measured yet)"
        return f"inference service {self.target} ({self.host}): {describe(self.cpu)}"

    def note(self) -> str:
        """How the figures were measured, and on which CPU."""
        how = (f"{self.last['hint']} hint, {self.last['requests']} requests, "
               if self.last is not None else "")
        return (f"{self._how()}, timed server-side by the inference service "
                f"{self.target}: {how}inference only, best of {self.repeats} x {self.seconds:g} s, on "
                f"{describe(self.cpu) if self.cpu is not None else 'its CPU'}")
