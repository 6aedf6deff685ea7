"""Import directions from the files other tools write: one loader for `serve --direction`, PutDirection, realign
and the client CLI (docs/directions.md "Direction files and imports").

Formats (`format`, "auto" detects by content, and a path's name or layout where content cannot tell):
    safetensors       this server's own files (direction_files.py), or one raw table tensor
    pt                torch.save of a tensor, or of a one-tensor dict: read with torch.load(weights_only=True) only
    npy               numpy.save of a float array (allow_pickle=False)
    persona-vectors   Chen et al.'s persona_vectors `{trait}_{prompt_avg,response_avg,prompt_last}_diff.pt`: a
                      (n_layers + 1, hidden) tensor of hidden_states, row l + 1 is layer l, row 0 the embeddings
    steering-vectors  a .pt of a steering-vectors SteeringVector's `layer_activations` ({layer: (hidden,)}), or of
                      `dataclasses.asdict(vector)` ({"layer_activations": ..., "layer_type": "decoder_block"})
    repeng-gguf       repeng's ControlVector.export_gguf: GGUF with tensors `direction.{layer}` and metadata
                      `controlvector.model_hint`, `controlvector.layer_count`
    sae-lens          an SAE-Lens SAE directory (cfg.json + sae_weights.safetensors) and a feature index: the
                      feature's decoder column is the steering vector, its encoder row, bias and JumpReLU
                      threshold the monitor (directions.Feature)

Layer numbering: layer l is the output of decoder block l (Hugging Face `hidden_states[l + 1]`). Tables are read
with `numbering` "layers" (row l is layer l, n_layers rows) or "hidden_states" (row l + 1 is layer l, n_layers + 1
rows, row 0 the embeddings, dropped). A table of n_layers + 1 rows is ambiguous (the hidden states of this model, or
layers of another) and is refused unless the numbering is given or the format says so (persona-vectors, by format
or by its file names). repeng and steering-vectors number decoder blocks as this server does; an SAE's hook
`blocks.{l}.hook_resid_post` is layer l and `blocks.{l}.hook_resid_pre` layer l - 1.

Nothing is half-loaded: every problem raises InvalidArgumentError naming `field` before a Direction is returned;
Direction.validate (the registry runs it) then checks widths and values against the model.
"""

from __future__ import annotations

import io
import json
import math
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load_bytes

from .directions import Direction, Feature, Provenance
from .errors import InvalidArgumentError

__all__ = [
    "FORMATS",
    "NUMBERINGS",
    "detect_format",
    "direction_from_table",
    "load_direction_file",
    "load_direction_spec",
    "split_direction_spec",
]

FORMATS = ("auto", "safetensors", "pt", "npy", "persona-vectors", "steering-vectors", "repeng-gguf", "sae-lens")
NUMBERINGS = ("layers", "hidden_states")
MAX_FILE_BYTES = 1 << 30  # one file read whole (an SAE's weights are read by slices and are not bounded by this)
SAE_CONFIG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"
_PERSONA_NAME = re.compile(r"_(prompt_avg|response_avg|prompt_last)_diff\.pth?$")
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_SPEC_KEYS = ("format", "layer", "feature", "numbering")


def load_direction_file(
    source: str | Path | bytes,
    name: str | None = None,
    *,
    format: str = "auto",
    num_layers: int | None = None,
    layer: int | None = None,
    feature: int | None = None,
    numbering: str | None = None,
    sae_config: str | bytes | None = None,
    field: str = "path",
) -> Direction:
    """Read a direction from a path (a file, or an SAE-Lens directory) or from a file's bytes.

    name: defaults to the stored name, else the file's stem ("direction" for bytes; an SAE feature adds ".{index}").
    num_layers: the model's layer count, needed to read tables. layer: the monitor layer (required for a single raw
    vector; overrides a file's). feature: the SAE latent index (sae-lens only). numbering: "layers" or
    "hidden_states" for tables. sae_config: cfg.json's text when `source` is the bytes of sae_weights.safetensors.
    field: the request field errors name (`path` for files, `file` for PutDirection)."""
    if format not in FORMATS:
        raise InvalidArgumentError("format", f"unknown format {format[:40]!r} (use {', '.join(FORMATS)})")
    if numbering is not None and numbering not in NUMBERINGS:
        raise InvalidArgumentError("numbering", f"unknown numbering {numbering[:40]!r} (layers, hidden_states)")
    if feature is not None and feature < 0:
        raise InvalidArgumentError("feature", "must be >= 0")
    path: Path | None = None
    data = b""
    if isinstance(source, bytes):
        data = source
        stem = "direction"
    else:
        path = Path(source)
        stem = path.stem
        if path.is_dir() or (path.name in (SAE_CONFIG, SAE_WEIGHTS) and (path.parent / SAE_CONFIG).is_file()):
            sae_dir = path if path.is_dir() else path.parent
            if format not in ("auto", "sae-lens"):
                raise InvalidArgumentError(field, f"{str(path)!r} is an SAE directory, not a {format} file")
            return _sae_from_dir(sae_dir, name, feature, layer, field)
        if not path.is_file():
            raise InvalidArgumentError(field, f"direction file {str(path)!r} does not exist")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidArgumentError(field, f"direction file {str(path)!r} is larger than 1 GiB")
        data = path.read_bytes()
    fmt = detect_format(data, path.name if path else None) if format == "auto" else format
    if fmt == "persona-vectors":
        if numbering not in (None, "hidden_states"):
            raise InvalidArgumentError("numbering", "persona-vectors tables are numbered hidden_states")
        numbering = "hidden_states"
    if feature is not None and fmt != "sae-lens":
        raise InvalidArgumentError("feature", f"only an SAE (sae-lens) has features; this is {fmt}")
    if fmt == "safetensors":
        from .direction_files import direction_from_bytes

        return direction_from_bytes(data, name, num_layers, layer, default_name=stem, numbering=numbering)
    if fmt == "sae-lens":
        if sae_config is None:
            raise InvalidArgumentError(
                "sae_config", "an SAE's weights need its cfg.json (give the SAE directory, or sae_config)"
            )
        cfg = _json_object(sae_config, "sae_config")
        return _sae_direction(cfg, _SaeBytes(data, field), name, stem, feature, layer, field, "sae_config")
    if fmt == "repeng-gguf":
        return _from_gguf(data, name or stem, layer, field)
    if fmt == "npy":
        return direction_from_table(_npy(data, field), name or stem, num_layers, layer, "file:npy", numbering, field)
    obj = _torch_load(data, field)  # pt, persona-vectors, steering-vectors
    return _from_torch_object(obj, name or stem, fmt, num_layers, layer, numbering, field)


def detect_format(data: bytes, filename: str | None = None) -> str:
    """The format of a file: by its name's suffix where it has a known one (.safetensors, .npy, .gguf, .pt/.pth; a
    .pt named like persona-vectors' outputs is persona-vectors), else by content (magic numbers; safetensors
    holding W_enc and W_dec are SAE-Lens weights). Anything else is "pt": torch.load with weights_only then refuses
    whatever is not plain tensors."""
    suffix = Path(filename).suffix.lower() if filename else ""
    if suffix in (".pt", ".pth"):
        return "persona-vectors" if _PERSONA_NAME.search(filename or "") else "pt"
    by_suffix = {".npy": "npy", ".gguf": "repeng-gguf"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if suffix == ".safetensors" or (len(data) > 9 and data[8:9] == b"{" and 0 < n <= len(data) - 8):
        header = data[8 : 8 + n] if 0 < n <= len(data) - 8 else b""
        return "sae-lens" if b'"W_enc"' in header and b'"W_dec"' in header else "safetensors"
    if data[:4] == b"GGUF":
        return "repeng-gguf"
    if data[:6] == b"\x93NUMPY":
        return "npy"
    return "pt"


def load_direction_spec(spec: str, name: str | None = None, num_layers: int | None = None) -> Direction:
    """load_direction_file from a command-line spec `PATH[,key=value...]` (split_direction_spec)."""
    path, options = split_direction_spec(spec)
    return load_direction_file(path, name, num_layers=num_layers, **options)


def split_direction_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`PATH[,format=F][,layer=L][,feature=I][,numbering=N]` (serve --direction NAME=SPEC, realign --direction)
    -> (path, keyword arguments of load_direction_file)."""
    path, *rest = spec.split(",")
    options: dict[str, Any] = {}
    for part in rest:
        key, sep, value = part.partition("=")
        if not sep or key not in _SPEC_KEYS:
            raise InvalidArgumentError(
                "--direction", f"{part[:40]!r}: expected key=value with key one of {', '.join(_SPEC_KEYS)}"
            )
        if key in ("layer", "feature"):
            try:
                options[key] = int(value)
            except ValueError as exc:
                raise InvalidArgumentError(f"--direction.{key}", f"{value[:20]!r} is not an integer") from exc
        else:
            options[key] = value
    return path, options


def direction_from_table(
    table: torch.Tensor,
    name: str,
    num_layers: int | None,
    monitor_layer: int | None,
    method: str,
    numbering: str | None = None,
    field: str = "path",
) -> Direction:
    """A raw (hidden,) vector at `monitor_layer`, or a table: (n_layers, hidden) numbered "layers" (the default
    for that shape) or (n_layers + 1, hidden) numbered "hidden_states" (never assumed). Rows of exact zeros (layers
    a file does not cover, the embeddings row) are dropped; a NaN row is kept so that validate() refuses the file."""
    t = table.detach().float().cpu()
    if t.ndim == 1:
        if monitor_layer is None:
            raise InvalidArgumentError("monitor_layer", "a single raw vector needs a layer (monitor_layer)")
        vectors = {monitor_layer: t.clone()}
    elif t.ndim == 2:
        if num_layers is None:
            raise InvalidArgumentError(field, "a layer table needs the model's layer count to interpret")
        rows = t.shape[0]
        if rows == num_layers + 1 and numbering is None:
            raise InvalidArgumentError(
                "numbering",
                f"a table of {rows} rows for a {num_layers}-layer model is ambiguous: say numbering=hidden_states "
                "(row l + 1 is layer l, row 0 the embeddings, as persona-vectors writes) or format=persona-vectors",
            )
        if numbering == "hidden_states":
            if rows != num_layers + 1:
                raise InvalidArgumentError(
                    field, f"numbering hidden_states needs {num_layers + 1} rows (embeddings + layers), got {rows}"
                )
            vectors = {layer: t[layer + 1].clone() for layer in range(num_layers)}
        elif rows == num_layers:
            vectors = {layer: t[layer].clone() for layer in range(num_layers)}
        else:
            raise InvalidArgumentError(
                field, f"table has {rows} rows; the model has {num_layers} layers (expected that, or +1 with "
                "numbering=hidden_states)"
            )
        vectors = {layer: v for layer, v in vectors.items() if not bool((v == 0).all())}
        if not vectors:
            raise InvalidArgumentError(field, "every row of the table is zero")
    else:
        raise InvalidArgumentError(field, f"tensor of shape {tuple(t.shape)} is not a direction")
    chosen = monitor_layer if monitor_layer is not None else _middle(sorted(vectors))
    return Direction(name=name, vectors=vectors, monitor_layer=chosen, method=method)


# ---------------------------------------------------------------- torch and numpy


def _torch_load(data: bytes, field: str) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled code and objects: report, never retry unsafely
        raise InvalidArgumentError(
            field,
            f"cannot read the file as plain tensors (torch.load weights_only): {str(exc)[:300]}. Objects are never "
            "unpickled: save tensors or dicts of tensors (for a steering-vectors SteeringVector, "
            "torch.save(vector.layer_activations))",
        ) from exc


def _from_torch_object(
    obj: Any, name: str, fmt: str, num_layers: int | None, layer: int | None, numbering: str | None, field: str
) -> Direction:
    if fmt == "steering-vectors" or (isinstance(obj, dict) and _is_steering_vectors(obj)):
        return _from_steering_vectors(obj, name, layer, field)
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor):
        raise InvalidArgumentError(
            field, f"holds a {type(obj).__name__}, expected a tensor, a one-tensor dict or {{layer: tensor}}"
        )
    method = "persona-vectors" if fmt == "persona-vectors" else "file:pt"
    return direction_from_table(obj, name, num_layers, layer, method, numbering, field)


def _is_steering_vectors(obj: dict[Any, Any]) -> bool:
    return "layer_activations" in obj or (bool(obj) and all(isinstance(k, int) for k in obj))


def _from_steering_vectors(obj: Any, name: str, layer: int | None, field: str) -> Direction:
    """steering-vectors' SteeringVector(layer_activations: dict[int, Tensor], layer_type="decoder_block"): the
    activations are added to decoder block outputs, so key l is layer l."""
    if not isinstance(obj, dict):
        raise InvalidArgumentError(field, f"steering-vectors: expected a dict, got {type(obj).__name__}")
    acts = obj.get("layer_activations", obj)
    layer_type = obj.get("layer_type", "decoder_block") if "layer_activations" in obj else "decoder_block"
    if layer_type != "decoder_block":
        raise InvalidArgumentError(
            field, f"steering-vectors layer_type {str(layer_type)[:40]!r}: only decoder_block (the residual stream)"
        )
    if not isinstance(acts, dict) or not acts:
        raise InvalidArgumentError(field, "steering-vectors: layer_activations is not a non-empty {layer: tensor}")
    vectors: dict[int, torch.Tensor] = {}
    for key, value in acts.items():
        if isinstance(key, bool) or not isinstance(key, int) or not isinstance(value, torch.Tensor):
            raise InvalidArgumentError(field, f"steering-vectors: entry {str(key)[:20]!r} is not int -> tensor")
        if key < 0:
            raise InvalidArgumentError(field, f"steering-vectors: negative layer {key} (give layers from 0)")
        vectors[key] = value.detach().float().cpu().reshape(-1).clone()
    chosen = layer if layer is not None else _middle(sorted(vectors))
    return Direction(name=name, vectors=vectors, monitor_layer=chosen, method="steering-vectors")


def _npy(data: bytes, field: str) -> torch.Tensor:
    try:
        arr = np.asarray(np.load(io.BytesIO(data), allow_pickle=False), dtype=np.float32)  # strings fail here too
    except Exception as exc:
        raise InvalidArgumentError(field, f"cannot read the file as .npy: {str(exc)[:300]}") from exc
    return torch.from_numpy(arr.copy())


# ---------------------------------------------------------------- repeng GGUF


def _from_gguf(data: bytes, name: str, layer: int | None, field: str) -> Direction:
    """repeng ControlVector.export_gguf: `direction.{layer}` tensors, layer = decoder block index (repeng reads
    hidden_states[layer + 1] and adds to that block's output)."""
    import gguf  # the `gguf` package; imported here: only GGUF files need it

    with tempfile.NamedTemporaryFile(suffix=".gguf") as tmp:  # GGUFReader memory-maps a file
        tmp.write(data)
        tmp.flush()
        try:
            reader = gguf.GGUFReader(tmp.name)
            arch = _gguf_string(reader, "general.architecture")
            hint = _gguf_string(reader, "controlvector.model_hint")
            float_types = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            bad = [t.name for t in reader.tensors if t.tensor_type not in float_types]
            if bad:  # a quantized tensor's data is its packed blocks, not values
                raise InvalidArgumentError(field, f"GGUF tensor {bad[0][:40]!r} is quantized (F32 or F16 only)")
            tensors = [(t.name, np.array(t.data, dtype=np.float32)) for t in reader.tensors]
        except InvalidArgumentError:
            raise
        except Exception as exc:
            raise InvalidArgumentError(field, f"cannot read the file as GGUF: {str(exc)[:300]}") from exc
    if arch != "controlvector":
        raise InvalidArgumentError(field, f"GGUF architecture {arch[:40]!r} is not a repeng control vector")
    vectors: dict[int, torch.Tensor] = {}
    for tname, arr in tensors:
        m = re.fullmatch(r"direction\.(\d+)", tname)
        if m is None:
            raise InvalidArgumentError(field, f"GGUF tensor {tname[:40]!r} is not direction.{{layer}}")
        vectors[int(m.group(1))] = torch.from_numpy(arr.reshape(-1).copy())
    if not vectors:
        raise InvalidArgumentError(field, "the control vector has no direction.{layer} tensors")
    chosen = layer if layer is not None else _middle(sorted(vectors))
    method = f"repeng:controlvector (model_hint {hint[:64]})" if hint else "repeng:controlvector"
    return Direction(name=name, vectors=vectors, monitor_layer=chosen, method=method)


def _gguf_string(reader: Any, key: str) -> str:
    f = reader.get_field(key)
    if f is None or not len(f.parts):
        return ""
    return str(bytes(f.parts[-1]), encoding="utf-8", errors="replace")


# ---------------------------------------------------------------- SAE-Lens


class _SaeBytes:
    """The weights of an uploaded sae_weights.safetensors (bounded by the request size)."""

    def __init__(self, data: bytes, field: str) -> None:
        try:
            self._tensors = st_load_bytes(data)
        except (SafetensorError, ValueError) as exc:
            raise InvalidArgumentError(field, f"not a valid safetensors file: {str(exc)[:200]}") from exc

    def names(self) -> set[str]:
        return set(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def row(self, key: str, index: int) -> torch.Tensor:
        return self._tensors[key][index].clone()

    def column(self, key: str, index: int) -> torch.Tensor:
        return self._tensors[key][:, index].clone()

    def vector(self, key: str) -> torch.Tensor:
        return self._tensors[key].float()


class _SaeFile:
    """sae_weights.safetensors on disk, read by slices: one latent of a 300 MB SAE costs one row and one column."""

    def __init__(self, path: Path, field: str) -> None:
        try:
            self._f = safe_open(str(path), framework="pt")
            self._keys = set(self._f.keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise InvalidArgumentError(field, f"{path.name}: not a valid safetensors file: {str(exc)[:200]}") from exc

    def names(self) -> set[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._f.get_slice(key).get_shape())

    def row(self, key: str, index: int) -> torch.Tensor:
        return self._f.get_slice(key)[index : index + 1].reshape(-1).clone()

    def column(self, key: str, index: int) -> torch.Tensor:
        return self._f.get_slice(key)[:, index : index + 1].reshape(-1).clone()

    def vector(self, key: str) -> torch.Tensor:
        return self._f.get_tensor(key).float()


def _sae_from_dir(sae_dir: Path, name: str | None, feature: int | None, layer: int | None, field: str) -> Direction:
    cfg_path, weights = sae_dir / SAE_CONFIG, sae_dir / SAE_WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise InvalidArgumentError(
            field, f"{str(sae_dir)!r} is not an SAE-Lens directory ({SAE_CONFIG} and {SAE_WEIGHTS})"
        )
    cfg = _json_object(cfg_path.read_bytes(), SAE_CONFIG)
    return _sae_direction(cfg, _SaeFile(weights, field), name, sae_dir.name, feature, layer, field, SAE_CONFIG)


def _sae_direction(
    cfg: dict[str, Any],
    weights: _SaeBytes | _SaeFile,
    name: str | None,
    stem: str,
    feature: int | None,
    layer: int | None,
    field: str,
    cfg_field: str,
) -> Direction:
    """One latent of an SAE-Lens SAE (StandardSAE or JumpReLUSAE, v6 cfg.json with `metadata.hook_name`, or the
    older flat `hook_name`): feature_acts = act((x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc)."""
    raw_meta = cfg.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    hook = str(meta.get("hook_name") or cfg.get("hook_name") or "")
    names = weights.names()
    arch = str(cfg.get("architecture") or ("jumprelu" if "threshold" in names else "standard"))
    if arch not in ("standard", "jumprelu"):
        raise InvalidArgumentError(
            f"{cfg_field}.architecture", f"SAE architecture {arch[:40]!r} is not supported (standard, jumprelu)"
        )
    for key, ok in (("normalize_activations", "none"), ("reshape_activations", "none")):
        value = cfg.get(key) or "none"
        if value != ok:
            raise InvalidArgumentError(
                f"{cfg_field}.{key}", f"{str(value)[:40]!r}: only SAEs that read the raw residual stream are supported"
            )
    if cfg.get("hook_head_index") is not None or meta.get("hook_head_index") is not None:
        raise InvalidArgumentError(f"{cfg_field}.hook_head_index", "per-head SAEs are not residual-stream features")
    m = _HOOK.fullmatch(hook)
    if m is None:
        raise InvalidArgumentError(
            f"{cfg_field}.hook_name",
            f"{hook[:60]!r}: only residual-stream SAEs (blocks.{{l}}.hook_resid_post or hook_resid_pre)",
        )
    block, where = int(m.group(1)), m.group(2)
    sae_layer = block if where == "post" else block - 1  # resid_pre of block l is the output of block l - 1
    if sae_layer < 0:
        raise InvalidArgumentError(f"{cfg_field}.hook_name", f"{hook!r} reads the embeddings, not a layer's output")
    if layer is not None and layer != sae_layer:
        raise InvalidArgumentError("monitor_layer", f"the SAE reads layer {sae_layer} ({hook}), not layer {layer}")
    required = {"W_enc", "W_dec", "b_enc", "b_dec"} | ({"threshold"} if arch == "jumprelu" else set())
    missing = sorted(required - names)
    if missing:
        raise InvalidArgumentError(field, f"SAE weights lack {', '.join(missing)} (a {arch} SAE)")
    w_enc, w_dec = weights.shape("W_enc"), weights.shape("W_dec")
    if len(w_enc) != 2 or len(w_dec) != 2 or w_enc != (w_dec[1], w_dec[0]):
        raise InvalidArgumentError(field, f"W_enc {w_enc} and W_dec {w_dec} are not [d_in, d_sae] and [d_sae, d_in]")
    d_in, d_sae = w_enc
    for key in ("d_in", "d_sae"):
        if key in cfg and cfg[key] != {"d_in": d_in, "d_sae": d_sae}[key]:
            raise InvalidArgumentError(f"{cfg_field}.{key}", f"cfg.json says {cfg[key]!r}, the weights {w_enc}")
    for key, n in (("b_enc", d_sae), ("b_dec", d_in), ("threshold", d_sae)):
        if key in required and weights.shape(key) != (n,):
            raise InvalidArgumentError(field, f"{key} has shape {weights.shape(key)}, expected ({n},)")
    if feature is None:
        raise InvalidArgumentError("feature", f"an SAE needs a feature index (0..{d_sae - 1})")
    if not 0 <= feature < d_sae:
        raise InvalidArgumentError("feature", f"unknown feature index {feature}: the SAE has {d_sae} (0..{d_sae - 1})")
    encoder = weights.column("W_enc", feature).float()  # (d_in,)
    decoder = weights.row("W_dec", feature).float()  # (d_in,): what the latent writes into the residual stream
    for what, vec in (("decoder", decoder), ("encoder", encoder)):
        if not bool(torch.isfinite(vec).all()):
            raise InvalidArgumentError(field, f"feature {feature}'s {what} has NaN or infinite values")
    b_dec = weights.vector("b_dec")  # (d_in,)
    subtract = cfg.get("apply_b_dec_to_input", True) is not False
    values = {
        "bias": float(weights.vector("b_enc")[feature]),
        "threshold": float(weights.vector("threshold")[feature]) if arch == "jumprelu" else 0.0,
        "b_dec_proj": float(encoder.double() @ b_dec.double()) if subtract else 0.0,
    }
    for key, v in values.items():
        if not math.isfinite(v):
            raise InvalidArgumentError(field, f"feature {feature}'s {key} is not finite")
    source = f"sae-lens {arch} {hook}"
    feat = Feature(
        encoder=encoder,
        bias=values["bias"],
        threshold=values["threshold"],
        b_dec_proj=values["b_dec_proj"],
        activation="jumprelu" if arch == "jumprelu" else "relu",
        index=feature,
        source=source,
    )
    model = str(meta.get("model_name") or cfg.get("model_name") or "")
    return Direction(
        name=name or f"{stem}.{feature}",
        vectors={sae_layer: decoder},
        monitor_layer=sae_layer,
        provenance=Provenance(model_id=model[:512]),
        method=f"{source} feature {feature}",
        feature=feat,
    )


def _json_object(raw: str | bytes, field: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgumentError(field, f"not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(obj, Mapping):
        raise InvalidArgumentError(field, "is not a JSON object")
    return dict(obj)


def _middle(layers: list[int]) -> int:
    return layers[len(layers) // 2]
