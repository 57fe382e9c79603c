"""Typed progress events: every kind round-trips through its JSON form and a protobuf Struct exactly, the
consoles and the trainer's gauges read their fields, and a job of a real service reports the same events
over gRPC as the same stage run in this process."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re

import pytest
import test_stage_contract
from prometheus_client import CollectorRegistry

from slimyolo.errors import SlimYoloError
from slimyolo.progress import (
    EVENT_TYPES,
    ClassMetrics,
    Count,
    FrameRate,
    StageStep,
    SweepBest,
    SweepPoint,
    SweepRow,
    TrainEpoch,
    TrainStep,
    event_from_dict,
    event_to_dict,
)
from slimyolo.rpc.messages import dict_to_struct, struct_to_dict

contract = test_stage_contract.contract  # the fixture: the stage services over one store with the mini detector

ROW = SweepRow("both", 0.5, 2, 1.0, 0.5, 0.25, 1000, 4000, 2.0, 3.0, True, 0.4375, 1.0, 30.0)
BASELINE = SweepRow("baseline", None, 0, 0.5, 0.5, 0.5, 2000, 8000, 4.0, None, True)
EPOCH = dict(phase="sparsity", epoch=3, epochs=10, lr=0.001, box=1.0, obj=2.0, cls=0.0, distill=0.0, loss=3.0,
             gamma_below_001=0.25, s=0.0, images_per_s=12.0, time_s=4.0)
# Every kind, with the values a Struct is hard on: whole floats (2.0 → 2), zeros, None, empty and ordered maps.
EVENTS = {
    "train step": TrainStep("train", 1, 2, 1, 6, {"box": 1.0, "obj": 0.5, "cls": 0.0, "distill": 0.0, "loss": 1.5},
                            0.0, 12.0),
    "epoch not evaluated": TrainEpoch(**EPOCH),
    "epoch evaluated": TrainEpoch(**{**EPOCH, "distill": 0.5}, bad_images=1, bad_label_lines=2, precision=1.0,
                                  recall=0.0, map50=0.5, f1=0.0,
                                  per_class=(ClassMetrics(0, "cat", 3, 1.0, 1.0, 1.0, 1.0), ClassMetrics(1, "dog", 0))),
    "sweep row": SweepPoint(ROW),
    "sweep baseline row": SweepPoint(BASELINE),
    "sweep best": SweepBest(ROW),
    "sweep without a best": SweepBest(None),
    "prune step": StageStep("prune", "evaluate before"),
    "convert step": StageStep("convert", "quantize", {"images": 300, "accuracy_control": False}),
    "convert step, float details": StageStep("convert", "parity_ok", {"max_abs": 0.0, "max_rel": 2.5e-06}),
    "bench": StageStep("convert", "bench", {"seconds": 2.0}),
    "mixed details": StageStep("convert", "done", {"path": "/m/1", "seconds": 12.0, "none": None, "n": -3}),
    "count": Count("eval", 8, 24),
    "frame rate": FrameRate(120, 30.0),
}


def test_the_table_holds_every_event_type():
    assert {type(e).type for e in EVENTS.values()} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", EVENTS.values(), ids=EVENTS)
def test_an_event_round_trips_its_dict_json_and_a_struct_exactly(event):
    doc = event_to_dict(event)
    assert doc["type"] == type(event).type
    text = json.dumps(doc, allow_nan=False)  # JSON values only
    for back in (event_from_dict(doc), event_from_dict(json.loads(text)),
                 event_from_dict(struct_to_dict(dict_to_struct(doc)))):
        assert back == event
        assert repr(back) == repr(event)  # the same types (2.0 stays a float) and the same order of keys


def test_numpy_scalars_become_plain_numbers():
    np = pytest.importorskip("numpy")
    event = StageStep("convert", "parity_ok", {"max_abs": np.float32(0.5), "images": np.int64(2)})
    assert event_from_dict(event_to_dict(event)) == StageStep("convert", "parity_ok", {"max_abs": 0.5, "images": 2})
    assert event_from_dict(event_to_dict(dataclasses.replace(EVENTS["count"], done=np.int64(3)))).done == 3


@pytest.mark.parametrize(("doc", "message"), [
    ({"type": "epoch"}, "progress event: unknown type 'epoch' (known: train_step, train_epoch, "),
    ({"stage": "eval", "done": 1, "total": 2}, "progress event: unknown type None"),
    ({"type": "count", "stage": "eval", "done": 1}, "count: missing field 'total'"),
    ({"type": "count", "stage": "eval", "done": 1, "total": 2, "map50": 1}, "count: unknown field 'map50'"),
    ({"type": "count", "stage": "eval", "done": 1.5, "total": 2}, "count.done: expected int, got 1.5"),
    ({"type": "count", "stage": "eval", "done": True, "total": 2}, "count.done: expected int, got True"),
    ({"type": "frame_rate", "frames": 1, "fps": "fast"}, "frame_rate.fps: expected float"),
    ({"type": "sweep_best", "row": {"stage": "both"}}, "sweep_best.row: missing field 'global_percent'"),
    ({"type": "stage_step", "stage": "convert", "step": "x", "details": {"a": 1}}, "expected [key, value] pairs"),
    ({"type": "stage_step", "stage": "convert", "step": "x", "details": [["a", "b"]], "float_details": ["a"]},
     "stage_step.details.a: listed in float_details but not a number"),
    ({"type": "count", "stage": "eval", "done": 1, "total": 2, "float_details": []}, "unknown field 'float_details'"),
])
def test_a_document_that_is_no_event_is_an_error_naming_what(doc, message):
    with pytest.raises(SlimYoloError, match=re.escape(message)):
        event_from_dict(doc)


def test_only_events_of_json_values_are_encoded():
    with pytest.raises(TypeError, match=r"a progress event is one of TrainStep, .*got dict"):
        event_to_dict({"stage": "eval", "done": 1, "total": 2})
    with pytest.raises(TypeError, match=r"stage_step\.details\.when: .* \(object\) is not a JSON value"):
        event_to_dict(StageStep("convert", "x", {"when": object()}))


# -- what reads them --------------------------------------------------------------------------------------------


def _console_lines(events, capsys) -> list[str]:
    """What StageConsole prints for ``events`` (the trainer's lines go to stderr, the others to its stream)."""
    from slimyolo.stages.console import StageConsole

    stream = io.StringIO()
    console = StageConsole(stream, bars=False)
    for event in events:
        console(event)
    console.close()
    return stream.getvalue().splitlines() + capsys.readouterr().err.splitlines()


def test_the_console_prints_the_lines_it_always_printed(capsys):
    lines = _console_lines([EVENTS[k] for k in ("sweep row", "sweep baseline row", "sweep best", "sweep without a best",
                                                "prune step", "convert step", "bench", "count", "frame rate",
                                                "epoch not evaluated", "epoch evaluated")], capsys)
    assert lines == [
        "sweep both      percent  0.500 units   2: mAP@0.5 0.2500  params 1,000",
        "sweep baseline  percent      - units   0: mAP@0.5 0.5000  params 2,000",
        "sweep best: both percent 0.5 units 2: mAP@0.5 0.2500, params 1,000",
        "sweep: no point within the allowed mAP drop",
        "prune: evaluate before",
        "convert: quantize (images 300, accuracy_control False)",
        "convert: bench (seconds 2.0)",
        "sparsity epoch 3/10  loss 3.0000 (box 1.0000 obj 2.0000 cls 0.0000)  |γ|<0.01 25.0%  12.0 img/s  4 s",
        "sparsity epoch 3/10  loss 3.0000 (box 1.0000 obj 2.0000 cls 0.0000 distill 0.5000)  P 1.000 R 0.000 "
        "mAP@0.5 0.500 F1 0.000  |γ|<0.01 25.0%  12.0 img/s  4 s  [1 unreadable images, 2 bad label lines]",
    ]
    assert "(out)" in _console_lines([SweepPoint(dataclasses.replace(ROW, within=False))], capsys)[0]


def test_the_trainer_gauges_read_the_events():
    from slimyolo.services.trainer import TrainMetrics

    registry = CollectorRegistry()
    metrics = TrainMetrics(registry)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"slimyolo_train_{name}", {"phase": "sparsity", **labels})

    metrics.observe(dataclasses.replace(EVENTS["train step"], phase="sparsity", lr=0.01))
    assert value("learning_rate") == 0.01 and value("loss", component="obj") == 0.5 and value("epochs") == 2
    metrics.observe(EVENTS["epoch not evaluated"])
    assert value("epoch") == 3 and value("gamma_below_001_ratio") == 0.25 and value("map50") is None
    assert value("loss", component="loss") == 3.0 and value("epochs_completed_total") == 1
    metrics.observe(EVENTS["epoch evaluated"])
    assert (value("map50"), value("precision"), value("recall")) == (0.5, 1.0, 0.0)
    metrics.observe(EVENTS["count"])  # not the trainer's: ignored
    assert value("epochs_completed_total") == 2


# -- a job of a real service reports what the stage reports in process -------------------------------------------


def _untimed(event):
    """The event without its wall-clock figures (two runs of the same work take different times)."""
    if isinstance(event, TrainStep | TrainEpoch):
        event = dataclasses.replace(event, images_per_s=0.0)
    return dataclasses.replace(event, time_s=0.0) if isinstance(event, TrainEpoch) else event


def test_a_remote_job_reports_the_same_typed_events_and_console_lines_as_in_process(contract, capsys):
    """The trainer's and the pruner's jobs (the services of test_stage_contract, over one store holding the trained
    mini detector and its data set) against the same stages run here."""
    from slimyolo.stages.kinds import parse_spec, run_stage

    store, remote = contract
    model = {"cfg": "inputs/mini.cfg", "weights": "inputs/mini.weights"}
    specs = {
        "train": ("train", {**model, "data": "inputs/synth", "epochs": 1, "batch_size": 16, "img_size": 96,
                            "threads": 1, "seed": 0, "eval_interval": 1, "max_eval_images": 8,
                            "augment": {"mosaic": 0.0}}),
        "eval": ("eval", {**model, "data": "inputs/synth", "batch_size": 8}),
        "prune": ("prune", {**model, "global_percent": 0.5, "data": "inputs/synth", "max_images": 8,
                            "batch_size": 8}),
        "sweep": ("sweep", {**model, "data": "inputs/synth", "percents": [0.3, 0.9, 0.3], "max_map_drop": 0.05,
                            "max_images": 8, "latency_runs": 0}),
    }
    seen: dict[str, list] = {}
    for case, (kind, doc) in specs.items():
        for path, run in (("local", lambda spec, report: run_stage(store, spec, report)), ("remote", remote.run)):
            out = {} if kind == "eval" else {"out": f"runs/{case}-{path}"}
            events: list = []
            run(parse_spec(kind, {**doc, **out}), events.append)
            seen[f"{case} {path}"] = events
        local, over_grpc = seen[f"{case} local"], seen[f"{case} remote"]
        assert local and all(type(e).type in EVENT_TYPES for e in over_grpc), case
        assert [_untimed(e) for e in over_grpc] == [_untimed(e) for e in local], case
    assert {type(e) for case in ("train", "eval", "prune", "sweep") for e in seen[f"{case} remote"]} == {
        TrainStep, TrainEpoch, Count, StageStep, SweepPoint, SweepBest}
    epoch = next(e for e in seen["train remote"] if isinstance(e, TrainEpoch))
    assert epoch.evaluated and len(epoch.per_class) == 2 and isinstance(epoch.lr, float)
    assert not any(math.isnan(e.row.map50) for e in seen["sweep remote"] if isinstance(e, SweepPoint))
    capsys.readouterr()
    lines = {path: _console_lines([_untimed(e) for case in specs for e in seen[f"{case} {path}"]], capsys)
             for path in ("local", "remote")}
    assert lines["remote"] == lines["local"] and any(line.startswith("sweep best") or "no point" in line
                                                    for line in lines["local"])


def test_a_sweep_row_written_before_stage_was_renamed_method_still_reads():
    """A sweep checkpoint's points.json (and a stored sweep.json) of an earlier version names the method ``stage``."""
    from slimyolo.progress import sweep_row_method

    doc = event_to_dict(SweepPoint(ROW))
    assert "method" in doc["row"] and "stage" not in doc["row"]  # written under the new name
    old = {**doc, "row": {("stage" if k == "method" else k): v for k, v in doc["row"].items()}}
    assert event_from_dict(old) == SweepPoint(ROW)
    assert event_from_dict(struct_to_dict(dict_to_struct(old))) == SweepPoint(ROW)
    assert sweep_row_method({"stage": "both"}) == sweep_row_method({"method": "both"}) == "both"


@pytest.mark.parametrize("name", ["train step", "epoch evaluated"])
def test_a_training_event_of_a_server_before_phase_was_named_so_still_reads(name):
    """A trainer of an earlier version sends the training phase as ``stage``: a client reads it as ``phase``."""
    event = EVENTS[name]
    doc = event_to_dict(event)
    assert doc["phase"] == event.phase and "stage" not in doc
    old = {("stage" if k == "phase" else k): v for k, v in doc.items()}
    assert event_from_dict(old) == event
    assert event_from_dict(struct_to_dict(dict_to_struct(old))) == event
