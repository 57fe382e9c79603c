"""The job journal: each job's record in the artifact store, with its owner's lease.

With a journal (the stage services have one), jobs outlive the process: each job's record
(spec, state, events, result or error, owner and lease) is written to the artifact store as
``jobs/<service>/<id>.json`` while it runs (:class:`JournalWriter`, for the job manager). A
service that starts again (after a SIGKILL, an OOM kill, an eviction) loads the records: finished
jobs answer GetJob and WatchJob with their whole history, and unfinished ones whose owner is gone
run again under their old id, from the stage's last checkpoint (:mod:`slimyolo.stages.durable`).
A replica asked about a job another replica runs reads its record from the store.

A replica that drains (SIGTERM) hands its jobs over instead of failing them: it writes each job's
record *released* (no owner, no lease) and a note ``jobs/<service>/handover/<id>``; every replica
of the service looks for notes about once a second (:meth:`JobJournal.offered`) and takes the job
over at once under its id (:meth:`JobJournal.claim`), and a replica that starts takes over the
released jobs as it does those of a dead owner.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.store import Store

log = logging.getLogger(__name__)

HANDOVER = "handover"  # jobs/<service>/handover/<id>: a job released by a draining replica, to take over


class JobJournal:
    """Job records in the artifact store, ``jobs/<service>/<id>.json``, with their owner's lease.

    A record is replaced whole (one object PUT: a reader sees the previous record or the new
    one). The process running a job is its owner: it rewrites the record at most every
    ``flush_seconds`` while events arrive, and at least every ``lease_seconds / 3`` to renew its
    lease. Another process may take an unfinished job over when its lease has expired, or at
    once when the owner was a process on the same host that is gone (a restarted container).
    """

    def __init__(self, store: Store, service: str, *, lease_seconds: float = 30.0, flush_seconds: float = 1.0,
                 offers_seconds: float = 1.0, settle_seconds: float = 0.5) -> None:
        """``offers_seconds``: how often a replica looks for jobs handed over (:meth:`offered`); ``settle_seconds``:
        how long a claim waits before reading back who won it (:meth:`claim`)."""
        self.store, self.prefix = store, f"jobs/{service}"
        self.lease_seconds, self.flush_seconds = lease_seconds, flush_seconds
        self.offers_seconds, self.settle_seconds = offers_seconds, settle_seconds
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}

    def key(self, job_id: str) -> str:
        return f"{self.prefix}/{job_id}.json"

    def save(self, record: Mapping[str, Any], *, release: bool = False) -> None:
        """Write a job's record with this process as its owner and a fresh lease, or with ``release`` with neither
        (any replica may take the job over at once)."""
        doc = {**record, "owner": None, "lease_until": 0.0} if release else \
            {**record, "owner": self.owner, "lease_until": time.time() + self.lease_seconds}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "job.json"
            path.write_text(json.dumps(doc))
            self.store.put(self.key(record["id"]), path)

    def load(self, job_id: str) -> dict[str, Any] | None:
        """The record of ``job_id``, None when the store has none (or the id cannot be one)."""
        if not job_id.isalnum():
            return None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.store.get(self.key(job_id), Path(tmp) / "job.json")
            except NotFoundError:
                return None
            return json.loads(path.read_text())

    def ids(self) -> list[str]:
        """The ids of every job record of the service (one listing)."""
        return [k.rsplit("/", 1)[1].removesuffix(".json") for k in self.store.list_keys(self.prefix)
                if k.endswith(".json")]

    def records(self) -> list[dict[str, Any]]:
        """Every job record of the service, oldest first."""
        docs = [d for d in (self.load(i) for i in self.ids()) if d is not None]
        return sorted(docs, key=lambda d: d["create_time"])

    def offer(self, record: Mapping[str, Any]) -> None:
        """Release a job that this process stops running (it drains) and leave the note that makes another
        replica take it over at once."""
        self.save(record, release=True)
        with tempfile.TemporaryDirectory() as tmp:
            note = Path(tmp) / "note"
            note.write_text(json.dumps({"id": record["id"], "from": self.owner, "time": time.time()}))
            self.store.put(self._note(record["id"]), note)

    def offered(self) -> list[str]:
        """The ids of the jobs handed over and not yet taken (one listing of a prefix that is mostly empty)."""
        return [k.rsplit("/", 1)[1] for k in self.store.list_keys(f"{self.prefix}/{HANDOVER}")]

    def claim(self, record: Mapping[str, Any]) -> bool:
        """Make this process the owner of an unfinished job whose owner is gone; False when another replica
        claimed it in the same moment (the record read back after ``settle_seconds`` names the last writer)."""
        self.save(record)
        time.sleep(self.settle_seconds)
        now = self.load(record["id"]) or {}
        if (now.get("owner") or {}).get("token") != self.owner["token"]:
            return False
        self.withdraw(record["id"])
        return True

    def withdraw(self, job_id: str) -> None:
        """Remove a job's handover note (taken over, or finished meanwhile)."""
        self.store.delete(self._note(job_id))

    def _note(self, job_id: str) -> str:
        return f"{self.prefix}/{HANDOVER}/{job_id}"

    def owner_gone(self, record: Mapping[str, Any]) -> bool:
        """Whether an unfinished job's owner can no longer be running it."""
        owner = record.get("owner") or {}
        if float(record.get("lease_until", 0)) < time.time():
            return True
        if owner.get("host") != self.owner["host"]:
            return False
        if owner.get("pid") == self.owner["pid"]:
            return owner.get("token") != self.owner["token"]  # an earlier process with our pid (pid 1 in a container)
        try:
            os.kill(int(owner.get("pid", 0)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
        return False


class JournalWriter:
    """Writes job records into a :class:`JobJournal` from a thread of its own, so that a job never waits for the store.

    ``changed(id)`` marks a job's record; the thread writes the marked ones at most every
    ``flush_seconds`` (at once when a job became final), and the running ones at least every
    ``lease_seconds / 3`` to renew their lease. ``records(ids)`` (the job manager's) gives, for the
    marked jobs and the running ones, the function that takes each record at the moment it is written.
    """

    def __init__(self, journal: JobJournal,
                 records: Callable[[set[str]], list[tuple[str, Callable[[], Mapping[str, Any]]]]]) -> None:
        self.journal, self._records = journal, records
        self._dirty: set[str] = set()
        self._flushed = threading.Condition()
        self._flush_lock = threading.Lock()
        threading.Thread(target=self._flush_forever, name="job-journal", daemon=True).start()

    def changed(self, job_id: str, final: bool = False) -> None:
        """Mark a job's record for the next write (at once if the job is final)."""
        with self._flushed:
            self._dirty.add(job_id)
            if final:
                self._flushed.notify_all()

    def hand_over(self, job_id: str, take: Callable[[], Mapping[str, Any]]) -> None:
        """Write a job's record released, with its handover note (:meth:`JobJournal.offer`), after any write in
        progress, so that no older record of this process lands after it; the job manager lists the job no
        more, so no later flush writes it."""
        with self._flush_lock:
            with self._flushed:
                self._dirty.discard(job_id)
            self.journal.offer(take())

    def flush(self) -> None:
        """Write the records of the jobs that changed (and renew the running ones' leases).

        One flush at a time, each record taken when it is written: a slower, older write never
        lands after a newer one (a job's final record is the last one written).
        """
        with self._flush_lock:
            with self._flushed:
                ids, self._dirty = self._dirty, set()
            for job_id, take in self._records(ids):
                try:
                    self.journal.save(take())
                except SlimYoloError as exc:  # the store is down: keep the job, try again at the next flush
                    log.warning("could not write the record of job %s: %s", job_id, exc)
                    with self._flushed:
                        self._dirty.add(job_id)

    def _flush_forever(self) -> None:
        renew = self.journal.lease_seconds / 3
        last = 0.0
        while True:
            with self._flushed:
                self._flushed.wait(self.journal.flush_seconds)
                due = bool(self._dirty) or time.monotonic() - last >= renew
            if due:
                self.flush()
                last = time.monotonic()
