"""The durable alert and audit log: one JSON object per line, appended, flushed and fsynced.

What it records (every record has `time`, ISO 8601 UTC, and `kind`):
- `start`: the log was opened (a server start), with the process id;
- `alert`: every alert a finished request raised (from the monitor feed, as a sink: it sees every event, unlike a
  watcher), with the request, the rpc and front end, and the alert;
- `SetSteering`, `PutDirection`, `DeleteDirection`: every change of the policy or the registry, with `who` (the role
  the caller's credentials gave and a fingerprint of the token it sent, never the token) and `peer` (gRPC's peer
  string, e.g. `ipv4:127.0.0.1:50123`).

Writes happen on one writer thread, so recording an alert never blocks the engine's event loop; `write()` lets a
caller (an administrative RPC) wait until its record is on disk before answering. The file is opened in append mode:
a restart adds to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime
import enum
import hashlib
import json
import logging
import math
import os
import queue
import threading
from pathlib import Path
from typing import Any

from .directions import Direction
from .monitor_feed import MonitorEvent

__all__ = ["AuditLog", "direction_summary", "plain"]

log = logging.getLogger(__name__)

_STOP = object()


def plain(value: Any) -> Any:
    """A JSON-ready copy: dataclasses as objects, enums by name, tuples as lists, non-finite floats as strings
    ("nan", "inf", "-inf": JSON has no such numbers)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def direction_summary(d: Direction) -> dict[str, Any]:
    """What a PutDirection record says about the stored direction: its metadata and a hash of its vectors
    (SHA-256 of the float32 bytes, layer by layer in order), so a later reader can tell which vectors were served."""
    digest = hashlib.sha256()
    for layer in d.layers:
        digest.update(d.vectors[layer].detach().to("cpu").float().contiguous().numpy().tobytes())
    return {
        "name": d.name,
        "layers": list(d.layers),
        "monitor_layer": d.monitor_layer,
        "hidden_size": d.hidden_size,
        "calibrated": d.calibrated,
        "method": d.method,
        "description": d.description,
        "model_id": d.provenance.model_id,
        "vectors_sha256": digest.hexdigest(),
    }


class AuditLog:
    """`AuditLog(path)` opens (creating directories) and appends; `close()` writes what is queued and stops."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # closed by close()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
        self._thread.start()
        self._closed = False
        self.record("start", pid=os.getpid())

    def record(self, kind: str, **fields: Any) -> concurrent.futures.Future[None]:
        """Queue one record (never blocks); the future completes once it is on disk (or with the write's error)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self._closed:
            done.set_exception(RuntimeError("the audit log is closed"))
            return done
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
        line = json.dumps({"time": now, "kind": kind, **plain(fields)}, ensure_ascii=False, allow_nan=False)
        self._queue.put((line, done))
        return done

    async def write(self, kind: str, **fields: Any) -> None:
        """Record and wait until the line is on disk. A failed write is logged, not raised: the change it
        describes has already happened."""
        try:
            await asyncio.wrap_future(self.record(kind, **fields))
        except (OSError, RuntimeError) as exc:
            log.error("audit log %s: %s record not written: %s", self.path, kind, exc)

    def alert_sink(self, event: MonitorEvent) -> None:
        """A monitor feed sink: one `alert` record per alert of the event (called on the engine's path: queues)."""
        for alert in event.alerts:
            self.record(
                "alert",
                request_id=event.request_id,
                rpc=event.rpc,
                front_end=event.front_end,
                variant=event.variant,
                alert=alert,
                steering=event.steering,
                policy_applied=event.policy_applied,
                policy_enforced=event.policy_enforced,
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self._file.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            line, done = item
            try:
                self._file.write(line + "\n")
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                log.error("audit log %s: write failed: %s", self.path, exc)
                done.set_exception(exc)
            else:
                done.set_result(None)
