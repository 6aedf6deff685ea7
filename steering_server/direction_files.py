"""Read and write direction files.

safetensors (canonical): tensor `direction` of shape (n_layers_stored, hidden) with metadata `layers` naming each
row's layer, or one tensor `layer.{l}` of shape (hidden,) per layer. Metadata (strings): model_id, config_hash,
tokenizer_hash, monitor_layer, method, n_examples, calibration (JSON: pooling -> {mu, sigma, threshold, ...}, at the
monitor layer), layer_calibration (optional JSON: layer -> pooling -> {...} at other layers, the targets of a CLAMP
there), created_at, description, removal (JSON: {"mode": "CLAMP", "strength": 0, "positions": "PROMPT", "layers":
[0, 1]}: the direction's removal recipe, the steering Compare runs by default; ABLATE 1 at every position when
absent; no layers: the mode's default layers). Every field is
checked on its own and a bad one is refused naming it (`safetensors.metadata.calibration: ...`).

An SAE feature (Direction.feature) adds tensor `feature.encoder` (hidden,) and metadata `feature` (JSON: bias,
threshold, b_dec_proj, activation, index, source).

Other formats (persona-vectors, repeng, steering-vectors, raw .pt/.npy, SAE-Lens) are read by direction_imports.py,
which `load_direction` calls. Nothing is half-loaded: any problem raises before a Direction is returned.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from .direction_imports import direction_from_table, load_direction_file
from .directions import DEFAULT_REMOVAL, FEATURE_ACTIVATIONS, Calibration, Direction, Feature, Provenance, Removal
from .errors import InvalidArgumentError
from .types import SteeringMode, SteeringPositions

__all__ = ["direction_from_bytes", "direction_to_bytes", "load_direction", "save_direction"]

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
                               "positions": direction.removal.positions.name,
                               **({"layers": list(direction.removal.layers)} if direction.removal.layers else {})}),
    }
    if direction.layer_calibration:
        meta["layer_calibration"] = json.dumps({str(layer): {k: asdict(v) for k, v in table.items()}
                                                for layer, table in sorted(direction.layer_calibration.items())})
    tensors = {"direction": table.contiguous()}
    if direction.feature is not None:
        f = direction.feature
        tensors["feature.encoder"] = f.encoder.float().cpu().contiguous()
        meta["feature"] = json.dumps({"bias": f.bias, "threshold": f.threshold, "b_dec_proj": f.b_dec_proj,
                                      "activation": f.activation, "index": f.index, "source": f.source})
    return st_save_bytes(tensors, metadata=meta)


def load_direction(
    path: str | Path,
    name: str | None = None,
    num_layers: int | None = None,
    monitor_layer: int | None = None,
    **options: Any,
) -> Direction:
    """Load any supported file (direction_imports.load_direction_file, the one loader; `options`: format, feature,
    numbering). `name` defaults to the stored name or the file stem; `num_layers` is needed to interpret tables;
    `monitor_layer` overrides the stored one (required for a raw single vector)."""
    return load_direction_file(path, name, num_layers=num_layers, layer=monitor_layer, **options)


def direction_from_bytes(
    data: bytes,
    name: str | None = None,
    num_layers: int | None = None,
    monitor_layer: int | None = None,
    default_name: str = "direction",
    numbering: str | None = None,
) -> Direction:
    """Parse a safetensors direction (an upload or a file's bytes). `numbering`: for one raw table tensor
    (direction_imports.direction_from_table)."""
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
        return direction_from_table(
            next(iter(tensors.values())), name, num_layers, monitor_layer, "file:safetensors", numbering, "safetensors"
        )
    else:
        raise InvalidArgumentError("safetensors", f"unrecognised tensors {sorted(tensors)[:5]}")
    stored_monitor: int | None = _meta_field(meta, "monitor_layer", lambda v: _int(v, 0, 1 << 16), None)
    no_calibration: dict[str, Calibration] = {}
    calibration = _meta_field(meta, "calibration", lambda v: _calibration(_json(v)), no_calibration)
    no_layers: dict[int, dict[str, Calibration]] = {}
    by_layer = _meta_field(meta, "layer_calibration", lambda v: _layer_calibration(_json(v)), no_layers)
    n_examples = _meta_field(meta, "n_examples", lambda v: _int(v, 0, (1 << 32) - 1), 0)
    removal = _meta_field(meta, "removal", lambda v: _removal(_json(v)), DEFAULT_REMOVAL)
    feature = None
    if "feature.encoder" in tensors:
        encoder = tensors["feature.encoder"].float().reshape(-1).clone()
        feature = _meta_field(meta, "feature", lambda v: _feature(_json(v), encoder), None)
        if feature is None:
            raise InvalidArgumentError("safetensors.metadata.feature", "a feature.encoder tensor needs this field")
        if monitor_layer is not None and monitor_layer != stored_monitor:
            raise InvalidArgumentError("monitor_layer", "an SAE feature is monitored at its own layer only")
    chosen = monitor_layer if monitor_layer is not None else stored_monitor
    if chosen is None:
        chosen = _middle(sorted(vectors))
    # Every calibrated layer by layer; a monitor layer chosen at load takes its own layer's calibration (none when
    # the file has none there), and the stored monitor layer's becomes one of the others.
    if stored_monitor in by_layer:
        raise InvalidArgumentError("safetensors.metadata.layer_calibration",
                                   f"names the monitor layer {stored_monitor}, whose calibration is `calibration`")
    tables = dict(by_layer)
    if calibration and (stored_monitor is not None or monitor_layer is None):
        tables[stored_monitor if stored_monitor is not None else chosen] = calibration
    calibration = tables.pop(chosen, {})
    return Direction(
        name=name,
        vectors=vectors,
        monitor_layer=chosen,
        calibration=calibration,
        layer_calibration=tables if calibration else {},
        provenance=Provenance(meta.get("model_id", ""), meta.get("config_hash", ""), meta.get("tokenizer_hash", "")),
        method=meta.get("method", ""),
        n_examples=n_examples,
        created_at=meta.get("created_at", ""),
        description=meta.get("description", ""),
        removal=removal,
        feature=feature,
    )


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


def _layer_calibration(raw: Any) -> dict[int, dict[str, Calibration]]:
    """{"layer": {pooling: {mu, sigma, ...}}} with integer layer keys."""
    if not isinstance(raw, dict):
        raise TypeError("layer_calibration is not an object")
    out = {_int(layer, 0, 1 << 16): _calibration(table) for layer, table in raw.items()}
    if len(out) != len(raw):
        raise ValueError("names a layer twice")
    return out


def _removal(raw: Any) -> Removal:
    """{"mode": "ABLATE" | "ADD" | "CLAMP", "strength": number, "positions": "ALL" | ..., "layers": [int, ...]}."""
    expected = ('{"mode": "ABLATE" | "ADD" | "CLAMP", "strength": number, "positions": "ALL" | "PROMPT" | ..., '
                '"layers": [int, ...]}')
    if not isinstance(raw, dict) or set(raw) - {"mode", "strength", "positions", "layers"} or "mode" not in raw:
        raise ValueError(f"expected {expected}")
    layers = raw.get("layers", [])
    if not isinstance(layers, list) or len(layers) > 1 << 10:
        raise ValueError(f"expected {expected}")
    mode, positions = raw["mode"], raw.get("positions", "ALL")
    if mode not in ("ABLATE", "ADD", "CLAMP"):
        raise ValueError(f"unknown mode {str(mode)[:20]!r}")
    if positions not in SteeringPositions.__members__:
        raise ValueError(f"unknown positions {str(positions)[:20]!r}")
    return Removal(SteeringMode[mode], _float(raw.get("strength", 1.0)), SteeringPositions[positions],
                   tuple(_int(layer, 0, 1 << 16) for layer in layers)).validate("removal")


def _feature(raw: Any, encoder: torch.Tensor) -> Feature:
    keys = {"bias", "threshold", "b_dec_proj", "activation", "index", "source"}
    if not isinstance(raw, dict) or set(raw) - keys or "bias" not in raw:
        raise ValueError(f"expected an object with bias and optionally {sorted(keys - {'bias'})}")
    activation = raw.get("activation", "jumprelu")
    if activation not in FEATURE_ACTIVATIONS:
        raise ValueError(f"unknown activation {str(activation)[:20]!r}")
    return Feature(
        encoder=encoder,
        bias=_float(raw["bias"]),
        threshold=_float(raw.get("threshold", 0.0)),
        b_dec_proj=_float(raw.get("b_dec_proj", 0.0)),
        activation=activation,
        index=_int(raw.get("index", 0), 0, (1 << 31) - 1),
        source=str(raw.get("source", ""))[:256],
    )


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
