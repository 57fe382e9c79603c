"""The OpenVINO engine: compile an IR, feed it frames, return boxes in original-image pixels.

Everything the engine needs comes from the IR's metadata (:mod:`slimyolo.infer.meta`): input
layout and type, letterbox convention, heads, class names. Frames are pipelined through a pool
of asynchronous infer requests: the calling thread letterboxes frame *k+1* and decodes frame
*k−1* while OpenVINO runs frame *k*. ``submit`` is safe to call from many threads (the gRPC
service does), each caller decoding its own result.

Completions are collected by a Python thread of the engine's own, not by an OpenVINO callback:
a callback runs Python on OpenVINO's C++ threads, and one of them that still needs the GIL when
the interpreter finalizes (pybind11 takes it again to drop its reference to the Python function)
is stopped while unwinding C++ frames, and the process aborts with "terminate called without
an active exception" after its work is done (2 % of short scripts on a 2-core machine). The
collector is not a daemon thread, so the interpreter joins it before it finalizes; it exits
as soon as no request is running.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from slimyolo import vocab
from slimyolo.data.letterbox import Letterbox, letterbox, placement, unletterbox_boxes
from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.infer.decode import decode, postprocess
from slimyolo.infer.meta import ModelMeta, read_meta

COLLECTOR_LINGER = 0.05  # seconds; also the longest an idle engine delays the interpreter's exit
@dataclass(frozen=True)
class Detections:
    """Boxes of one image: xyxy in that image's pixels, score, class index."""

    boxes: np.ndarray  # (M, 4) float32
    scores: np.ndarray  # (M,) float32
    classes: np.ndarray  # (M,) int64

    @classmethod
    def from_array(cls, det: np.ndarray) -> Detections:
        return cls(det[:, :4].astype(np.float32), det[:, 4].astype(np.float32), det[:, 5].astype(np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def to_list(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """JSON-ready boxes (the ``detect`` JSON-lines and the detection API)."""
        return [{"box": [round(float(v), 2) for v in box], "score": round(float(s), 4), "class": int(c),
                 "name": names[int(c)] if int(c) < len(names) else str(int(c))}
                for box, s, c in zip(self.boxes, self.scores, self.classes, strict=True)]


def resolve_ir(model: str | Path) -> Path:
    """A model.xml path, a model version folder holding one, or a model folder (``models/<name>``): its
    newest complete version, the one the inference service would serve."""
    path = Path(model)
    if path.is_dir() and not (path / "model.xml").exists():
        from slimyolo.serving.repository import FolderRepository

        versions = FolderRepository(path.parent).scan().get(path.name)  # complete versions, oldest first
        if versions:
            path = path / versions[-1]
    if path.is_dir():
        path = path / "model.xml"
    if not path.is_file():
        raise NotFoundError(f"{path}: no such IR (expected a model.xml, a model version folder or a model folder "
                            "holding complete versions)")
    return path


def _read_model(core: Any, path: Path) -> Any:
    try:
        return core.read_model(path)
    except RuntimeError as exc:
        raise SlimYoloError(f"{path}: not a readable OpenVINO IR: {str(exc).splitlines()[0]}") from None


def read_ir_meta(model: str | Path, core: Any = None) -> ModelMeta:
    """The metadata of an IR without compiling it."""
    import openvino as ov

    path = resolve_ir(model)
    return read_meta(_read_model(core or ov.Core(), path), str(path))


class Engine:
    """An IR compiled for one device, with its metadata, pre- and post-processing.

    ``input_size`` (height, width) reshapes a plain NCHW IR to another input size before
    compiling (the 2x2 mosaic runs a 416 model at 832); the convolutional network does not
    care and the decode reads grid sizes from the outputs. ``on_infer`` receives OpenVINO's own
    duration of every asynchronous request in seconds (inference alone, without the wait for a
    free request or the Python around it), for metrics.
    """

    def __init__(self, model: str | Path, device: str = "CPU", hint: str = "latency",
                 precision: str | None = None, input_size: tuple[int, int] | None = None,
                 conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 300,
                 num_requests: int = 0, core: Any = None,
                 on_infer: Callable[[float], None] | None = None) -> None:
        import openvino as ov

        path = resolve_ir(model)
        if hint not in vocab.PERFORMANCE_HINTS:
            raise SlimYoloError(f"unknown performance hint {hint!r} (choose from {', '.join(vocab.PERFORMANCE_HINTS)})")
        if precision is not None:
            precision = vocab.choose(precision, vocab.EXEC_PRECISIONS, "inference precision")
        self.path = path
        self.core = core or ov.Core()
        ov_model = _read_model(self.core, path)
        self.meta: ModelMeta = read_meta(ov_model, str(path))
        self.input_size = self._check_and_reshape(ov_model, input_size)
        config: dict[str, str] = {"PERFORMANCE_HINT": vocab.PERFORMANCE_HINTS[hint]}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = self.core.compile_model(ov_model, device, config)
        names = [o.get_any_name() for o in self.compiled.outputs]
        missing = [n for n in self.meta.outputs if n not in names]
        if missing:
            raise SlimYoloError(f"{path}: the metadata names outputs {missing} the IR does not have ({names})")
        self._out_index = [names.index(n) for n in self.meta.outputs]
        self.device, self.hint, self.precision = device, hint, precision
        self._on_infer = on_infer
        self.conf_thres, self.iou_thres, self.max_det = conf_thres, iou_thres, max_det
        self.num_requests = num_requests or int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._idle_requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(self.num_requests):
            self._idle_requests.put(self.compiled.create_infer_request())
        # (request, its future, its input array: shared with the request, so kept alive while it runs)
        self._running: collections.deque[tuple[Any, Future, np.ndarray]] = collections.deque()
        self._unresolved = 0  # submitted, future not yet resolved
        self._running_lock = threading.Condition()
        self._collector: threading.Thread | None = None

    # -- shapes ---------------------------------------------------------------------------
    def _check_and_reshape(self, ov_model: Any, input_size: tuple[int, int] | None) -> tuple[int, int]:
        """Check the IR's input agrees with its metadata; reshape to ``input_size`` if asked."""
        spec = self.meta.input
        if len(ov_model.inputs) != 1:
            raise SlimYoloError(f"{self.path}: a YOLO IR has one input, this one has {len(ov_model.inputs)}")
        shape = ov_model.inputs[0].get_partial_shape()
        channel_axis = 1 if spec.layout == "NCHW" else 3
        if shape.rank.get_length() != 4 or (shape[channel_axis].is_static
                                            and shape[channel_axis].get_length() != 3):
            raise SlimYoloError(f"{self.path}: input shape {shape} does not fit a 3-channel "
                                f"{spec.layout} image input")
        if input_size is None or input_size == (spec.height, spec.width):
            return spec.height, spec.width
        if spec.resize_inside or spec.layout != "NCHW":
            raise SlimYoloError(f"{self.path}: the IR resizes its input inside; convert without "
                                "--ppp to run it at another input size (e.g. for the mosaic)")
        stride = max(h.stride for h in self.meta.heads)
        if input_size[0] % stride or input_size[1] % stride:
            raise SlimYoloError(f"input size {input_size[1]}x{input_size[0]} must be a multiple of {stride}")
        ov_model.reshape({ov_model.inputs[0].get_any_name(): [1, 3, input_size[0], input_size[1]]})
        return input_size

    # -- pre/post-processing ----------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """A BGR uint8 frame → the IR's input tensor and the letterbox placement."""
        if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            got = "None" if image is None else f"{image.shape} {image.dtype}"
            raise SlimYoloError(f"expected a BGR uint8 image (H, W, 3), got {got}")
        spec = self.meta.input
        h, w = self.input_size
        if spec.resize_inside:  # the IR letterboxes; only the placement is needed to map boxes back
            return image[None], placement(image.shape[0], image.shape[1], h, w)
        canvas, lb = letterbox(image, h, w, spec.pad_value)
        if spec.layout == "NHWC":
            return (canvas if spec.color == "BGR" else canvas[:, :, ::-1])[None], lb
        rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB) if spec.color == "RGB" else canvas
        tensor = rgb.transpose(2, 0, 1)[None].astype(np.float32)
        if spec.normalized:
            tensor *= 1.0 / 255.0
        return np.ascontiguousarray(tensor), lb

    def postprocess(self, raws: Sequence[np.ndarray], lb: Letterbox) -> Detections:
        (det,) = postprocess(decode(raws, self.meta.heads), self.conf_thres, self.iou_thres, max_det=self.max_det)
        det[:, :4] = unletterbox_boxes(det[:, :4], lb)
        return Detections.from_array(det)

    # -- inference ----------------------------------------------------------------------------
    def infer(self, tensor: np.ndarray, started: Callable[[], None] | None = None) -> list[np.ndarray]:
        """Inference on one prepared tensor in the calling thread → raw heads in metadata order.

        Safe from many threads at once: each takes a free request of the pool (waiting while all
        ``num_requests`` run; ``started()`` is called once it has one) and waits for its own result
        with the GIL released. A server thread that waits for its call's answer anyway pays no hand-off
        this way: through :meth:`submit`'s collector thread, which resolves requests in submission order
        and moves each result across two threads, 8 callers got 7-26 % fewer inferences a second and
        spent 3-5 % more CPU on each (``make demo``'s three models, 2 cores; ``benchmarks/engine_calls.py``,
        BENCHMARKS.md section 9).
        """
        request = self._idle_requests.get()
        with self._running_lock:
            self._unresolved += 1
        try:
            if started is not None:
                started()
            # The request reads a writable array in place (Detect's letterboxed frame); a read-only one (ModelInfer's
            # view of the request's bytes) OpenVINO copies once, as it would without sharing. submit() shares its
            # inputs too: a request given a shared input once cannot copy a larger batch into it later. Outputs are
            # not shared: OpenVINO 2026.4 fails, or crashes, when a request that handed out shared outputs is then
            # run at another batch size.
            request.infer({0: tensor}, share_inputs=True)
            if self._on_infer is not None:
                self._on_infer(request.latency / 1000.0)
            return [request.get_output_tensor(i).data.copy() for i in self._out_index]
        finally:
            self._idle_requests.put(request)
            with self._running_lock:
                self._unresolved -= 1
                self._running_lock.notify_all()

    def submit(self, tensor: np.ndarray) -> Future:
        """Start asynchronous inference; the future resolves to the raw heads.

        Blocks while all ``num_requests`` requests run. The future is resolved, and its done
        callbacks run, on the engine's collector thread. The request reads ``tensor`` in place:
        the caller must not change it before the future resolves.
        """
        # The array kept alive below must be the very buffer the request reads: OpenVINO shares a C-contiguous array
        # and would share a contiguous copy of its own making of a strided one (an NHWC IR's RGB view of a frame).
        tensor = np.ascontiguousarray(tensor)
        request = self._idle_requests.get()
        future: Future = Future()
        try:
            request.start_async({0: tensor}, share_inputs=True)  # as infer() does; the array is kept until done
        except BaseException:
            self._idle_requests.put(request)
            raise
        with self._running_lock:
            self._running.append((request, future, tensor))
            self._unresolved += 1
            self._running_lock.notify_all()
            if self._collector is None:
                self._collector = threading.Thread(target=self._collect, name=f"engine-{self.path.parent.name}",
                                                   daemon=False)
                self._collector.start()
        return future

    def _collect(self) -> None:
        """Resolve the futures of the running requests in submission order; exit when none has
        run for ``COLLECTOR_LINGER`` seconds (a thread start per frame would cost more than a
        small model's inference)."""
        while True:
            with self._running_lock:
                if not self._running and not self._running_lock.wait_for(lambda: self._running, COLLECTOR_LINGER):
                    self._collector = None
                    return
                request, future, _tensor = self._running.popleft()  # the input stays alive until it ran
            try:
                request.wait()
                if self._on_infer is not None:
                    self._on_infer(request.latency / 1000.0)
                future.set_result([request.get_output_tensor(i).data.copy() for i in self._out_index])
            except Exception as exc:  # surfaced to the waiting caller, never lost in this thread
                future.set_exception(exc)
            finally:
                self._idle_requests.put(request)
                with self._running_lock:
                    self._unresolved -= 1
                    self._running_lock.notify_all()

    def detect(self, image: np.ndarray) -> Detections:
        """One frame end to end (thread-safe; concurrent callers share the request pool)."""
        tensor, lb = self.prepare(image)
        return self.postprocess(self.submit(tensor).result(), lb)

    def detect_stream(self, images: Iterable[np.ndarray]) -> Iterator[Detections]:
        """Pipelined detection over a frame sequence, results in input order."""
        pending: collections.deque[tuple[Future, Letterbox]] = collections.deque()
        for image in images:
            tensor, lb = self.prepare(image)
            pending.append((self.submit(tensor), lb))
            if len(pending) >= self.num_requests:
                future, old_lb = pending.popleft()
                yield self.postprocess(future.result(), old_lb)
        while pending:
            future, old_lb = pending.popleft()
            yield self.postprocess(future.result(), old_lb)

    def wait(self) -> None:
        """Return once every request submitted so far has finished and its future is resolved, and every
        :meth:`infer` under way has returned."""
        with self._running_lock:
            self._running_lock.wait_for(lambda: self._unresolved == 0)
