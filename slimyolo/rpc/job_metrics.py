"""The Prometheus metrics of a server's jobs: submitted, finished, active, and how long they ran."""

from __future__ import annotations

from typing import Any


class JobMetrics:
    """``slimyolo_jobs_*`` and ``slimyolo_job_duration_seconds``, labelled by job kind (and state)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.submitted = Counter("slimyolo_jobs_submitted_total", "Jobs submitted, by kind.", ["kind"],
                                 registry=registry)
        self.finished = Counter("slimyolo_jobs_finished_total",
                                "Jobs that reached a final state (or were handed over to another replica: state "
                                "handed_over), by kind and state.",
                                ["kind", "state"], registry=registry)
        self.active = Gauge("slimyolo_jobs_active", "Jobs queued or running now.", ["state"], registry=registry)
        self.duration = Histogram("slimyolo_job_duration_seconds", "Running time of finished jobs, by kind.",
                                  ["kind"], registry=registry,
                                  buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400))
