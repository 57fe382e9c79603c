"""The trainer service: ``slimyolo.v1.Trainer`` (StartTraining, StartEvaluation) and ``slimyolo.v1.Jobs``.

Each Start... request becomes a stage spec and a job running the stage against the artifact
store of the environment (:mod:`slimyolo.rpc.stage_service`, the servicer every stage service
shares). Training progress also feeds the ``slimyolo_train_*`` gauges on ``/metrics``.
"""

from __future__ import annotations

import argparse

from prometheus_client import CollectorRegistry, Counter, Gauge

from slimyolo.progress import Event, TrainEpoch, TrainStep
from slimyolo.rpc.server import Server
from slimyolo.rpc.stage_service import serve_stages

LOSSES = ("box", "obj", "cls", "distill", "loss")


class TrainMetrics:
    """Gauges of the latest training progress, by training phase (train, sparsity, finetune)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(f"slimyolo_train_{name}", doc, ["phase", *labels], registry=registry)

        self.epoch = gauge("epoch", "Last completed epoch of the latest training job.")
        self.epochs = gauge("epochs", "Epochs the latest training job runs.")
        self.loss = gauge("loss", "Mean training loss so far in the current epoch, by component.", "component")
        self.map50 = gauge("map50", "Validation mAP@0.5 after the latest evaluated epoch.")
        self.precision = gauge("precision", "Validation precision after the latest evaluated epoch.")
        self.recall = gauge("recall", "Validation recall after the latest evaluated epoch.")
        self.images = gauge("images_per_second", "Training throughput of the current epoch (all processes).")
        self.lr = gauge("learning_rate", "Learning rate of the latest step.")
        self.gamma = gauge("gamma_below_001_ratio", "Fraction of prunable BatchNorm |γ| below 0.01 (sparsity).")
        self.epochs_done = Counter("slimyolo_train_epochs_completed_total", "Training epochs completed.", ["phase"],
                                   registry=registry)

    def observe(self, event: Event) -> None:
        """Update the gauges from one progress event of the trainer (others are ignored)."""
        if isinstance(event, TrainStep):
            phase = event.phase
            for component, value in event.losses.items():
                self.loss.labels(phase, component).set(value)
            self.images.labels(phase).set(event.images_per_s)
            self.lr.labels(phase).set(event.lr)
            self.epochs.labels(phase).set(event.epochs)
        elif isinstance(event, TrainEpoch):
            phase = event.phase
            self.epoch.labels(phase).set(event.epoch)
            self.epochs_done.labels(phase).inc()
            for component in LOSSES:
                self.loss.labels(phase, component).set(getattr(event, component))
            self.images.labels(phase).set(event.images_per_s)
            self.gamma.labels(phase).set(event.gamma_below_001)
            if event.evaluated:
                self.map50.labels(phase).set(event.map50)
                self.precision.labels(phase).set(event.precision)
                self.recall.labels(phase).set(event.recall)


def build(server: Server, args: argparse.Namespace) -> None:
    """Serve Trainer and Jobs on ``server`` with the store of the environment (``SLIMYOLO_STORE``)."""
    serve_stages(server, "trainer", observe=TrainMetrics(server.registry).observe)
