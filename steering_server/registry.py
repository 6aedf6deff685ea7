"""The direction registry: names -> rows of the preallocated device direction table.

A row is immutable while a request references it: replacing a direction writes a fresh row and the old one is
freed when its last request ends, so in-flight requests never see a half-written or swapped vector.

An SAE feature (Direction.feature) holds two rows: its steering row (the decoder column's unit vector, which every
steering mode acts along) and its monitor row (the encoder row's unit vector at the monitor layer only, which the
hooks project on like any other row and never steer along: no request's coefficients name it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .containment import check_calibration
from .directions import Direction
from .errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from .runtime import SteeringRuntime

__all__ = ["DirectionRegistry", "RegisteredDirection"]

log = logging.getLogger(__name__)


@dataclass
class RegisteredDirection:
    direction: Direction
    row: int
    norms: dict[int, float]  # |v| per layer, for ADD
    refs: int = 0
    retired: bool = False  # replaced or deleted: free the row when refs reaches 0
    monitor_row: int = -1  # the row the monitor reads: `row` itself, or a feature's encoder row

    def __post_init__(self) -> None:
        if self.monitor_row < 0:
            self.monitor_row = self.row

    @property
    def rows(self) -> tuple[int, ...]:
        return (self.row,) if self.monitor_row == self.row else (self.row, self.monitor_row)


class DirectionRegistry:
    def __init__(
        self,
        runtime: SteeringRuntime,
        num_layers: int,
        hidden_size: int,
        residual_norms: Sequence[float] | None = None,
    ) -> None:
        self._runtime = runtime
        self._num_layers = num_layers
        self._hidden = hidden_size
        # The model's measured residual norm per layer (containment bounds); None: no bounds (unit tests only).
        self.residual_norms: list[float] | None = list(residual_norms) if residual_norms is not None else None
        # Bumped whenever the named directions change (put, delete): a plan made at one generation is valid until the
        # next (planning.PlanCache).
        self.generation = 0
        self._by_name: dict[str, RegisteredDirection] = {}
        self._rows: dict[int, RegisteredDirection] = {}  # every row in use, live or retired
        # (row a, row b) -> layer -> cosine of their vectors there, for the live entries (composition.inducing).
        self._cos: dict[tuple[int, int], dict[int, float]] = {}

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def first(self) -> Direction | None:
        """The first registered direction still present (the monitored one by convention)."""
        return next(iter(self._by_name.values())).direction if self._by_name else None

    def entries(self) -> list[RegisteredDirection]:
        return [self._by_name[n] for n in self.names()]

    def cosine(self, a: RegisteredDirection, b: RegisteredDirection, layer: int) -> float:
        """Cosine of two live entries' vectors at `layer` (0 when either has none there)."""
        if a is b:
            return 1.0
        return self._cos.get((a.row, b.row), {}).get(layer, 0.0)

    def list(self) -> list[Direction]:
        return [self._by_name[n].direction for n in self.names()]

    def get(self, name: str, field: str = "name") -> RegisteredDirection:
        entry = self._by_name.get(name)
        if entry is None:
            raise NotFoundError("direction", name, field)
        return entry

    def put(self, direction: Direction) -> Direction:
        direction = direction.validate(self._num_layers, self._hidden)
        if self.residual_norms is not None:
            check_calibration(direction, self.residual_norms)
        need = 2 if direction.feature is not None else 1
        free = [r for r in range(self._runtime.max_directions) if r not in self._rows]
        old = self._by_name.get(direction.name)
        if len(free) < need and old is not None and old.refs <= 0:
            # Replacing a direction no request holds: its rows are free now (nothing reads them for any request).
            free = sorted(free + list(old.rows))
        if len(free) < need:
            held = len({id(e) for e in self._rows.values()}) - len(self._by_name)
            raise ResourceExhaustedError(
                f"direction table full: {len(self._by_name)} directions registered"
                + (f" and {held} replaced ones held by running requests" if held else "")
                + f" in {self._runtime.max_directions} rows"
                + (" (an SAE feature takes two)" if need == 2 else "")
                + "; delete one first"
            )
        row = free[0]
        monitor_row = free[1] if need == 2 else row
        units = {layer: v / v.norm() for layer, v in direction.vectors.items()}
        if old is not None and {row, monitor_row} & set(old.rows):  # reused rows: the old entry no longer owns them
            for r in old.rows:
                self._rows.pop(r, None)
                if r not in (row, monitor_row):
                    self._runtime.clear_direction(r)
            old.retired = True
            for key in [k for k in self._cos if set(k) & set(old.rows)]:
                del self._cos[key]
            old = None
        self._runtime.write_direction(row, units)
        if direction.feature is not None:
            e = direction.feature.encoder
            self._runtime.write_direction(monitor_row, {direction.monitor_layer: e / e.norm()})
        entry = RegisteredDirection(
            direction, row, {layer: float(v.norm()) for layer, v in direction.vectors.items()}, monitor_row=monitor_row
        )
        self._by_name[direction.name] = entry
        self.generation += 1
        for r in entry.rows:
            self._rows[r] = entry
        for other in self._by_name.values():
            if other is not entry:
                cos = {
                    layer: float(units[layer] @ (other.direction.vectors[layer] / other.norms[layer]))
                    for layer in units
                    if layer in other.direction.vectors
                }
                self._cos[(row, other.row)] = self._cos[(other.row, row)] = cos
        self._runtime.live_rows = max(self._rows) + 1
        if old is not None:
            self._retire(old)
        log.info("direction %s registered in row %d (layers %s)", direction.name, row, list(direction.layers))
        return direction

    def put_scratch(self, vectors: dict[int, torch.Tensor]) -> RegisteredDirection:
        """A row outside the name table for one internal reading (ComputeDirection's calibration reads): it has no
        name, so no other request can monitor or steer it. Held once for the caller: `release` it to free the row.
        `vectors`: layer -> (hidden,), fp32, non-zero."""
        free = [r for r in range(self._runtime.max_directions) if r not in self._rows]
        if not free:
            raise ResourceExhaustedError(
                f"direction table full ({self._runtime.max_directions} rows): no row for a computed direction's "
                "readings; delete a direction or retry later"
            )
        row = free[0]
        self._runtime.write_direction(row, {layer: v / v.norm() for layer, v in vectors.items()})
        scratch = Direction("scratch", dict(vectors), monitor_layer=next(iter(vectors)))
        entry = RegisteredDirection(scratch, row, {layer: float(v.norm()) for layer, v in vectors.items()}, refs=1,
                                    retired=True)
        self._rows[row] = entry
        self._runtime.live_rows = max(self._rows) + 1
        return entry

    def delete(self, name: str) -> None:
        entry = self._by_name.pop(name, None)
        if entry is None:
            raise NotFoundError("direction", name, "name")
        self.generation += 1
        self._retire(entry)

    def acquire(self, entry: RegisteredDirection) -> None:
        entry.refs += 1

    def release(self, entry: RegisteredDirection) -> None:
        entry.refs -= 1
        if entry.retired and entry.refs <= 0:
            self._free(entry)

    def _retire(self, entry: RegisteredDirection) -> None:
        entry.retired = True
        if entry.refs <= 0:
            self._free(entry)

    def _free(self, entry: RegisteredDirection) -> None:
        if self._rows.get(entry.row) is entry:
            for r in entry.rows:
                del self._rows[r]
                self._runtime.clear_direction(r)
            for key in [k for k in self._cos if entry.row in k]:
                del self._cos[key]
            self._runtime.live_rows = max(self._rows, default=-1) + 1

    def check_layer(self, entry: RegisteredDirection, layer: int, field: str) -> None:
        if layer not in entry.direction.vectors:
            raise InvalidArgumentError(
                field,
                f"direction {entry.direction.name!r} has no vector for layer {layer} "
                f"(has {list(entry.direction.layers)})",
            )

    def unit(self, entry: RegisteredDirection, layer: int) -> torch.Tensor:
        v = entry.direction.vectors[layer]
        return v / v.norm()
