"""Read and write direction files.

safetensors (canonical): tensor `direction` of shape (n_layers_stored, hidden) with metadata `layers` naming each
row's layer, or one tensor `layer.{l}` of shape (hidden,) per layer. Metadata (strings): model_id, config_hash,
tokenizer_hash, monitor_layer, method, n_examples, calibration (JSON: pooling -> {mu, sigma, threshold, ...}),
created_at, description, removal (JSON: {"mode": "CLAMP", "strength": 0, "positions": "PROMPT"}: the direction's
removal recipe, the steering Compare runs by default; ABLATE 1 at every position when absent). Every field is
checked on its own and a bad one is refused naming it (`safetensors.metadata.calibration: ...`).

Also read: `.pt` through `torch.load(weights_only=True)` (never a full unpickle) and `.npy` (no pickles): a raw
(hidden,) vector, a (num_layers, hidden) table, or a persona-vectors (num_layers + 1, hidden) table whose row
l + 1 is layer l. Nothing is half-loaded: any problem raises before a Direction is returned.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from .directions import DEFAULT_REMOVAL, Calibration, Direction, Provenance, Removal
from .errors import InvalidArgumentError
from .types import SteeringMode, SteeringPositions

__all__ = ["direction_from_bytes", "direction_to_bytes", "load_direction", "save_direction"]

_MAX_FILE_BYTES = 1 << 30


def save_direction(path: str | Path, direction: Direction) -> None:
    Path(path).write_bytes(direction_to_bytes(direction))


def direction_to_bytes(direction: Direction) -> bytes:
    layers = direction.layers
    table = torch.stack([direction.vectors[layer].float().cpu() for layer in layers])  # (n_stored, hidden)
    meta = {
        "format": "steering-server.direction.v1",
        "name": direction.name,
        "layers": json.dumps(list(layers)),
        "monitor_layer": str(direction.monitor_layer),
        "model_id": direction.provenance.model_id,
        "config_hash": direction.provenance.config_hash,
        "tokenizer_hash": direction.provenance.tokenizer_hash,
        "method": direction.method,
        "n_examples": str(direction.n_examples),
        "calibration": json.dumps({k: asdict(v) for k, v in direction.calibration.items()}),
        "created_at": direction.created_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "description": direction.description,
        "removal": json.dumps({"mode": direction.removal.mode.name, "strength": direction.removal.strength,
                               "positions": direction.removal.positions.name}),
    }
    return st_save_bytes({"direction": table.contiguous()}, metadata=meta)


def load_direction(
    path: str | Path, name: str | None = None, num_layers: int | None = None, monitor_layer: int | None = None
) -> Direction:
    """Load any supported file. `name` defaults to the stored name or the file stem; `num_layers` is needed to
    interpret raw tables; `monitor_layer` overrides the stored one (required for raw files with several layers)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError("path", f"direction file {str(p)!r} does not exist")
    if p.stat().st_size > _MAX_FILE_BYTES:
        raise InvalidArgumentError("path", f"direction file {str(p)!r} is larger than 1 GiB")
    data = p.read_bytes()
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return direction_from_bytes(data, name, num_layers, monitor_layer, default_name=p.stem)
    if suffix in (".pt", ".pth"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses pickled code: report, never retry unsafely
            raise InvalidArgumentError("path", f"cannot read {p.name} as a tensor file: {exc}") from exc
        if isinstance(obj, dict) and len(obj) == 1:
            obj = next(iter(obj.values()))
        if not isinstance(obj, torch.Tensor):
            raise InvalidArgumentError("path", f"{p.name} holds a {type(obj).__name__}, expected one tensor")
        return direction_from_table(obj, name or p.stem, num_layers, monitor_layer, method="file:pt")
    if suffix == ".npy":
        try:
            arr = np.asarray(np.load(p, allow_pickle=False), dtype=np.float32)  # a string array fails here too
        except Exception as exc:
            raise InvalidArgumentError("path", f"cannot read {p.name} as .npy: {exc}") from exc
        return direction_from_table(torch.from_numpy(arr), name or p.stem, num_layers, monitor_layer, method="file:npy")
    raise InvalidArgumentError("path", f"unsupported direction file type {suffix!r} (.safetensors, .pt, .npy)")


def direction_from_bytes(
    data: bytes,
    name: str | None = None,
    num_layers: int | None = None,
    monitor_layer: int | None = None,
    default_name: str = "direction",
) -> Direction:
    """Parse a safetensors direction (an upload or a file's bytes)."""
    try:
        tensors = st_load_bytes(data)
        meta = _read_metadata(data)
    except (SafetensorError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidArgumentError("safetensors", f"not a valid safetensors file: {exc}") from exc
    name = name or meta.get("name") or default_name
    if "direction" in tensors and "layers" in meta:
        table = tensors["direction"].float()
        try:
            layers = [int(x) for x in json.loads(meta["layers"])]
        except (ValueError, TypeError) as exc:  # not JSON, or not a list of integers
            raise InvalidArgumentError("safetensors", f"bad `layers` metadata {meta['layers'][:80]!r}: {exc}") from exc
        if table.ndim != 2 or table.shape[0] != len(layers):
            raise InvalidArgumentError("safetensors", f"`direction` has shape {tuple(table.shape)} for layers {layers}")
        vectors = {layer: table[i].clone() for i, layer in enumerate(layers)}
    elif tensors and all(k.startswith("layer.") for k in tensors):
        try:
            vectors = {int(k.split(".", 1)[1]): v.float().reshape(-1).clone() for k, v in tensors.items()}
        except ValueError as exc:
            raise InvalidArgumentError("safetensors", f"bad layer key: {exc}") from exc
    elif len(tensors) == 1:
        return direction_from_table(next(iter(tensors.values())), name, num_layers, monitor_layer, "file:safetensors")
    else:
        raise InvalidArgumentError("safetensors", f"unrecognised tensors {sorted(tensors)[:5]}")
    stored_monitor: int | None = _meta_field(meta, "monitor_layer", lambda v: _int(v, 0, 1 << 16), None)
    no_calibration: dict[str, Calibration] = {}
    calibration = _meta_field(meta, "calibration", lambda v: _calibration(_json(v)), no_calibration)
    n_examples = _meta_field(meta, "n_examples", lambda v: _int(v, 0, (1 << 32) - 1), 0)
    removal = _meta_field(meta, "removal", lambda v: _removal(_json(v)), DEFAULT_REMOVAL)
    chosen = monitor_layer if monitor_layer is not None else stored_monitor
    if chosen is None:
        chosen = _middle(sorted(vectors))
    return Direction(
        name=name,
        vectors=vectors,
        monitor_layer=chosen,
        calibration=calibration if (monitor_layer is None or monitor_layer == stored_monitor) else {},
        provenance=Provenance(meta.get("model_id", ""), meta.get("config_hash", ""), meta.get("tokenizer_hash", "")),
        method=meta.get("method", ""),
        n_examples=n_examples,
        created_at=meta.get("created_at", ""),
        description=meta.get("description", ""),
        removal=removal,
    )


def direction_from_table(
    table: torch.Tensor, name: str, num_layers: int | None, monitor_layer: int | None, method: str
) -> Direction:
    """A raw (hidden,), (num_layers, hidden) or persona-vectors (num_layers + 1, hidden) tensor."""
    t = table.detach().float().cpu()
    if t.ndim == 1:
        if monitor_layer is None:
            raise InvalidArgumentError("monitor_layer", "a single raw vector needs a layer (monitor_layer)")
        vectors = {monitor_layer: t.clone()}
    elif t.ndim == 2:
        if num_layers is None:
            raise InvalidArgumentError("path", "a layer table needs the model's layer count to interpret")
        if t.shape[0] == num_layers:
            vectors = {layer: t[layer].clone() for layer in range(num_layers)}
        elif t.shape[0] == num_layers + 1:  # persona-vectors: row 0 is the embeddings, row l + 1 is layer l
            vectors = {layer: t[layer + 1].clone() for layer in range(num_layers)}
        else:
            raise InvalidArgumentError(
                "path", f"table has {t.shape[0]} rows; the model has {num_layers} layers (expected that or +1)"
            )
        # Rows of exact zeros (layers the file does not cover) are dropped rather than refused; a NaN row is kept so
        # that validate() refuses the file instead of silently half-loading it.
        vectors = {layer: v for layer, v in vectors.items() if not bool((v == 0).all())}
        if not vectors:
            raise InvalidArgumentError("path", "every row of the table is zero")
    else:
        raise InvalidArgumentError("path", f"tensor of shape {tuple(t.shape)} is not a direction")
    chosen = monitor_layer if monitor_layer is not None else _middle(sorted(vectors))
    return Direction(name=name, vectors=vectors, monitor_layer=chosen, method=method)


_T = TypeVar("_T")
_MAX_META_CHARS = 1 << 16  # per metadata value: a calibration table is a few hundred characters


def _meta_field(meta: dict[str, str], key: str, parse: Callable[[str], _T], default: _T) -> _T:
    """Parse one metadata field; any problem is INVALID_ARGUMENT naming the field (metadata is untrusted)."""
    if key not in meta or meta[key] == "":
        return default
    value = meta[key]
    try:
        if len(value) > _MAX_META_CHARS:
            raise ValueError(f"{len(value)} characters (at most {_MAX_META_CHARS})")
        return parse(value)
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError, RecursionError) as exc:
        raise InvalidArgumentError(f"safetensors.metadata.{key}", f"{str(exc)[:200] or type(exc).__name__}") from exc


def _json(value: str) -> Any:
    return json.loads(value)  # RecursionError for absurd nesting: caught by _meta_field


def _int(value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    n = int(value)
    if not lo <= n <= hi:
        raise ValueError(f"{n} is outside {lo}..{hi}")
    return n


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    x = float(value)  # OverflowError for 10**400
    if not math.isfinite(x):
        raise ValueError(f"{x} is not finite")
    return x


def _calibration(raw: Any) -> dict[str, Calibration]:
    """pooling -> Calibration with numeric fields (metadata is untrusted JSON; a string mu must not get through)."""
    if not isinstance(raw, dict):
        raise TypeError("calibration is not an object")
    out = {}
    for pooling, v in raw.items():
        if not isinstance(v, dict):
            raise TypeError(f"{pooling!r} is not an object")
        unknown = set(v) - {"mu", "sigma", "threshold", "target_fpr", "n"}
        if unknown:
            raise ValueError(f"unknown calibration fields {sorted(unknown)}")
        threshold, fpr = v.get("threshold"), v.get("target_fpr")
        out[str(pooling)] = Calibration(
            mu=_float(v["mu"]),
            sigma=_float(v["sigma"]),
            threshold=None if threshold is None else _float(threshold),
            target_fpr=None if fpr is None else _float(fpr),
            n=_int(v.get("n") or 0, 0, (1 << 32) - 1),
        )
    return out


def _removal(raw: Any) -> Removal:
    """{"mode": "ABLATE" | "ADD" | "CLAMP", "strength": number, "positions": "ALL" | "PROMPT" | ...}."""
    expected = '{"mode": "ABLATE" | "ADD" | "CLAMP", "strength": number, "positions": "ALL" | "PROMPT" | ...}'
    if not isinstance(raw, dict) or set(raw) - {"mode", "strength", "positions"} or "mode" not in raw:
        raise ValueError(f"expected {expected}")
    mode, positions = raw["mode"], raw.get("positions", "ALL")
    if mode not in ("ABLATE", "ADD", "CLAMP"):
        raise ValueError(f"unknown mode {str(mode)[:20]!r}")
    if positions not in SteeringPositions.__members__:
        raise ValueError(f"unknown positions {str(positions)[:20]!r}")
    return Removal(SteeringMode[mode], _float(raw.get("strength", 1.0)), SteeringPositions[positions]).validate(
        "removal")


def _middle(layers: list[int]) -> int:
    return layers[len(layers) // 2]


def _read_metadata(data: bytes) -> dict[str, str]:
    # safetensors header: 8-byte little-endian length, then JSON with an optional "__metadata__" object.
    if len(data) < 8:
        raise ValueError("file too short")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length beyond end of file")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("metadata is not an object")
    return {str(k): str(v) for k, v in meta.items()}
