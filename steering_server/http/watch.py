"""`GET /v1/steering/monitor`: the live monitor feed (WatchMonitor) as server-sent events, for observers.

The query string is WatchMonitorRequest's fields: `directions` (comma-separated or repeated), `min_score`,
`alerts_only`, `buffer_size`; their rules are the engine's (rules.check_watch). Each event is one finished request's
monitor summary, as gRPC's MonitorEvent, with `dropped`: the events this watcher lost since the previous one.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.datastructures import QueryParams

from ..errors import InvalidArgumentError
from ..monitor_feed import DEFAULT_BUFFER, MonitorEvent, MonitorFilter
from ..rules import check_watch_count
from . import encode

__all__ = ["event_json", "watch_filter"]

_KEYS = {"directions", "min_score", "alerts_only", "buffer_size"}


def watch_filter(query: QueryParams) -> MonitorFilter:
    for key in query:
        if key not in _KEYS:
            raise InvalidArgumentError(key, f"unknown parameter (known: {', '.join(sorted(_KEYS))})")
    directions = tuple(name for value in query.getlist("directions") for name in value.split(",") if name)
    check_watch_count(len(directions))  # before anything else looks at them
    buffer = _number(query, "buffer_size", integer=True)
    return MonitorFilter(
        directions=directions,
        min_score=_number(query, "min_score"),
        alerts_only=_flag(query, "alerts_only"),
        buffer=DEFAULT_BUFFER if buffer is None else int(buffer),  # its range is rules.check_watch's
    )


def event_json(event: MonitorEvent, dropped: int) -> dict[str, Any]:
    return {
        "object": "steering.monitor.event",
        "request_id": event.request_id,
        "time": event.time,
        "rpc": event.rpc,
        "front_end": event.front_end,
        "variant": event.variant,
        "monitor": [encode.scores(s) for s in event.scores],
        "alerts": [encode.alert(a) for a in event.alerts],
        "steering": [encode.term(t) for t in event.steering],
        "policy_applied": event.policy_applied,
        "policy_enforced": event.policy_enforced,
        "stop_reason": event.stop_reason.name if event.stop_reason is not None else None,
        "usage": {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens},
        "dropped": dropped,
    }


def _number(query: QueryParams, key: str, integer: bool = False) -> float | None:
    value = query.get(key)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidArgumentError(key, f"must be a number, got {value[:40]!r}") from None
    if integer and not (math.isfinite(number) and number.is_integer()):
        raise InvalidArgumentError(key, f"must be an integer, got {value[:40]!r}")
    return number


def _flag(query: QueryParams, key: str) -> bool:
    value = query.get(key, "false").lower()
    if value not in ("true", "false", "1", "0", ""):
        raise InvalidArgumentError(key, "must be true or false")
    return value in ("true", "1")
