"""The state directory (--state-dir): what the registry and the policy become across restarts and crashes.

Layout (every file replaced atomically: written to a temporary file in the same directory, fsynced, renamed over
the old one, the directory fsynced; a crash leaves the old file or the new one, never a mix):
    directions/<name>.safetensors   every direction put through the API (direction_files format)
    deleted.json                    names deleted through the API: start-up directions (built-in, --direction)
                                    stay deleted after a restart
    policy.json                     the server policy: {"enforced": bool, "terms": [term], "alerts": [{"direction",
                                    "action", "threshold" (null: the calibrated one), "scope", "steering": [term]}]},
                                    term = {"direction", "mode", "strength", "layers", "positions",
                                    "condition": null or {"direction", "threshold", "scope"}}

Restoring (Engine.restore_state) fails closed: a policy file that cannot be read, or an enforced policy that cannot
be applied, stops the engine from starting, because serving without an enforced policy is the one failure an
operator cannot see from outside. A direction file that cannot be read is skipped with an error in the log.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .direction_files import direction_to_bytes, load_direction
from .directions import Direction, validate_direction_name
from .types import (
    AlertAction,
    AlertRule,
    ConditionScope,
    SteeringCondition,
    SteeringMode,
    SteeringPolicy,
    SteeringPositions,
    SteeringTerm,
)

__all__ = ["StateDir", "StateError", "StoredState", "atomic_write"]

log = logging.getLogger(__name__)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash at any point leaves either the old or the new content."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself is durable only once the directory is


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StoredState:
    directions: list[Direction]
    deleted: set[str]
    policy: SteeringPolicy | None  # None: no policy file


class StateError(RuntimeError):
    """The saved state cannot be restored safely: the engine does not start (fail closed)."""


class StateDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._directions = self.path / "directions"
        self._directions.mkdir(parents=True, exist_ok=True)
        for stale in self.path.rglob(".*.tmp"):  # a write a crash interrupted before its rename
            stale.unlink(missing_ok=True)

    # ---- writes (each one atomic) ----
    def save_direction(self, direction: Direction) -> None:
        name = validate_direction_name(direction.name)
        atomic_write(self._directions / f"{name}.safetensors", direction_to_bytes(direction))
        deleted = self._read_deleted()
        if name in deleted:
            self._write_deleted(deleted - {name})

    def delete_direction(self, name: str) -> None:
        validate_direction_name(name)
        self._write_deleted(self._read_deleted() | {name})
        (self._directions / f"{name}.safetensors").unlink(missing_ok=True)
        _fsync_dir(self._directions)

    def save_policy(self, policy: SteeringPolicy) -> None:
        body = {
            "enforced": policy.enforced,
            "terms": [_term_json(t) for t in policy.terms],
            "alerts": [
                {
                    "direction": r.direction,
                    "action": r.action.name,
                    "threshold": r.threshold,
                    "scope": r.scope.name,
                    "steering": [_term_json(t) for t in r.steering],
                }
                for r in policy.alerts
            ],
        }
        atomic_write(self.path / "policy.json", json.dumps(body, indent=1).encode())

    # ---- reads ----
    def load(self, num_layers: int) -> StoredState:
        """Save writes the file, then clears a deletion; delete records the deletion, then removes the file: so a
        name both deleted and present was being deleted when the process died, and stays deleted."""
        deleted = self._read_deleted()
        directions = []
        for file in sorted(self._directions.glob("*.safetensors")):
            if file.stem in deleted:
                continue
            try:
                directions.append(load_direction(file, name=file.stem, num_layers=num_layers))
            except Exception as exc:  # one bad file must not lose the others
                log.error("state: cannot restore direction %s: %s", file.name, exc)
        return StoredState(directions, deleted, self._read_policy())

    def _read_deleted(self) -> set[str]:
        file = self.path / "deleted.json"
        if not file.exists():
            return set()
        try:
            names = json.loads(file.read_text())
            return {validate_direction_name(str(n)) for n in names}
        except Exception as exc:
            log.error("state: cannot read %s (%s); no deletions restored", file, exc)
            return set()

    def _write_deleted(self, names: set[str]) -> None:
        atomic_write(self.path / "deleted.json", json.dumps(sorted(names)).encode())

    def _read_policy(self) -> SteeringPolicy | None:
        file = self.path / "policy.json"
        if not file.exists():
            return None
        try:
            body = json.loads(file.read_text())
            terms = tuple(_term_from_json(t) for t in body["terms"])
            alerts = tuple(
                AlertRule(
                    direction=str(r["direction"]),
                    action=AlertAction[r["action"]],
                    threshold=None if r.get("threshold") is None else float(r["threshold"]),
                    scope=ConditionScope[r["scope"]],
                    steering=tuple(_term_from_json(t) for t in r.get("steering", [])),
                )
                for r in body.get("alerts", [])
            )
            enforced = body["enforced"]
            if not isinstance(enforced, bool):
                raise TypeError("enforced is not a boolean")
            return SteeringPolicy(terms, enforced, alerts)
        except Exception as exc:
            # Whether it was enforced is unknown: serving without it could drop an enforced policy silently.
            raise StateError(f"cannot read the saved policy {file}: {exc}") from exc


def _term_json(t: SteeringTerm) -> dict[str, object]:
    c = t.condition
    return {
        "direction": t.direction,
        "mode": t.mode.name,
        "strength": t.strength,
        "layers": list(t.layers),
        "positions": t.positions.name,
        "condition": None if c is None else {"direction": c.direction, "threshold": c.threshold, "scope": c.scope.name},
    }


def _term_from_json(t: dict[str, object]) -> SteeringTerm:
    c = t.get("condition")
    condition = None
    if c is not None:
        assert isinstance(c, dict)
        condition = SteeringCondition(str(c["direction"]), float(c["threshold"]), ConditionScope[c["scope"]])
    layers = t.get("layers", [])
    assert isinstance(layers, list)
    return SteeringTerm(
        direction=str(t["direction"]),
        mode=SteeringMode[str(t["mode"])],
        strength=float(t["strength"]),  # type: ignore[arg-type]
        layers=tuple(int(x) for x in layers),
        positions=SteeringPositions[str(t.get("positions", "ALL"))],
        condition=condition,
    )
