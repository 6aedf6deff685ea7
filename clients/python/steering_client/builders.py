"""Build request messages from Python values; shared by the sync and asyncio clients and the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from ._proto.steering.v1 import steering_pb2 as pb

if TYPE_CHECKING:
    from typing import Unpack

__all__ = [
    "CompareOptions",
    "GenerateOptions",
    "MessageLike",
    "ScoreOptions",
    "ablate",
    "add",
    "clamp",
    "compare_request",
    "generate_request",
    "parse_steering",
    "put_direction_request",
    "score_request",
    "steering_policy",
    "watch_request",
]

# A chat message: a ChatMessage, a {"role": ..., "content": ...} mapping or a (role, content) pair.
MessageLike = pb.ChatMessage | Mapping[str, str] | tuple[str, str]


class _InputOptions(TypedDict, total=False):
    messages: Sequence[MessageLike]
    prompt_token_ids: Sequence[int]


class _SamplingOptions(TypedDict, total=False):
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: Sequence[str]


class _MonitorOptions(TypedDict, total=False):
    monitor: Sequence[str]  # directions to monitor; empty: all
    token_scores: bool
    stop_threshold: float
    monitor_disabled: bool  # read no direction (server-wide alert rules still read theirs)


class GenerateOptions(_InputOptions, _SamplingOptions, _MonitorOptions, total=False):
    steering: Sequence[pb.SteeringTerm]
    ignore_policy: bool


class CompareOptions(_InputOptions, _SamplingOptions, _MonitorOptions, total=False):
    # name -> steering terms, in order (the first is the reference for divergence); empty: the server's defaults
    variants: Mapping[str, Sequence[pb.SteeringTerm]]


class PutDirectionOptions(TypedDict, total=False):
    vectors: Mapping[int, Sequence[float]]  # {layer: values}
    safetensors: bytes  # a direction file's bytes
    path: str | Path  # a .safetensors file to read
    file: bytes  # any importable file's bytes (docs/directions.md), read by the server's one loader
    format: str  # of `file`: "" (auto), safetensors, pt, npy, persona-vectors, steering-vectors, repeng-gguf, sae-lens
    feature: int  # sae-lens: the latent
    numbering: str  # tables in `file`: layers or hidden_states
    sae_config: str  # sae-lens: the SAE's cfg.json text (`file` is then its sae_weights.safetensors)
    monitor_layer: int
    description: str
    strict: bool
    removal: pb.Removal  # the direction's removal recipe (Compare's default); unset: the file's, else ABLATE 1


class ScoreOptions(_InputOptions, _MonitorOptions, total=False):
    response: str
    response_token_ids: Sequence[int]
    steering: Sequence[pb.SteeringTerm]
    ignore_policy: bool


# Positions a term steers, by the names the builders and the command line take.
POSITIONS = {
    "all": pb.ALL_POSITIONS,
    "prompt": pb.PROMPT_POSITIONS,
    "last_prompt": pb.LAST_PROMPT_POSITION,
    "generated": pb.GENERATED_POSITIONS,
}


def _positions(name: str) -> pb.SteeringPositions:
    if name not in POSITIONS:
        raise ValueError(f"bad positions {name!r}: use {', '.join(POSITIONS)}")
    return POSITIONS[name]


def ablate(
    direction: str, strength: float = 1.0, layers: Iterable[int] = (), positions: str = "all"
) -> pb.SteeringTerm:
    """Remove `direction` (strength 1 removes it fully) at `layers` (default: at and above its monitor layer)."""
    return pb.SteeringTerm(direction=direction, mode=pb.ABLATE, strength=strength, layers=list(layers),
                           positions=_positions(positions))


def add(direction: str, strength: float, layers: Iterable[int] = (), positions: str = "all") -> pb.SteeringTerm:
    """Add `strength` times the stored vector (negative subtracts)."""
    return pb.SteeringTerm(direction=direction, mode=pb.ADD, strength=strength, layers=list(layers),
                           positions=_positions(positions))


def clamp(direction: str, value: float, layers: Iterable[int] = (), positions: str = "all") -> pb.SteeringTerm:
    """Set the projection onto `direction` to `value` (z units when the direction is calibrated: of its last prompt
    token for prompt positions, of its answer tokens otherwise). `positions`: all, prompt, last_prompt or
    generated."""
    return pb.SteeringTerm(direction=direction, mode=pb.CLAMP, strength=value, layers=list(layers),
                           positions=_positions(positions))


def parse_steering(spec: str) -> pb.SteeringTerm:
    """`NAME[:MODE[:STRENGTH[:LAYERS[:POSITIONS]]]]`, e.g. `misalignment`, `misalignment:add:-2`,
    `m:clamp:0:4,5,6`, `m:clamp:0::prompt`. MODE is ablate (default), add or clamp; STRENGTH defaults to 1; LAYERS
    is a comma-separated list; POSITIONS is all (default), prompt, last_prompt or generated."""
    parts = spec.split(":")
    if not parts[0] or len(parts) > 5:
        raise ValueError(f"bad steering spec {spec!r}: expected NAME[:MODE[:STRENGTH[:LAYERS[:POSITIONS]]]]")
    mode_name = parts[1].upper() if len(parts) > 1 and parts[1] else "ABLATE"
    if mode_name not in ("ABLATE", "ADD", "CLAMP"):
        raise ValueError(f"bad steering mode {parts[1]!r} in {spec!r}: use ablate, add or clamp")
    term = pb.SteeringTerm(direction=parts[0], mode=pb.SteeringMode.Value(mode_name))
    if len(parts) > 2 and parts[2]:
        term.strength = float(parts[2])
    if len(parts) > 3 and parts[3]:
        term.layers.extend(int(x) for x in parts[3].split(","))
    if len(parts) > 4 and parts[4]:
        term.positions = _positions(parts[4])
    return term


def generate_request(prompt: str | None = None, **options: Unpack[GenerateOptions]) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        steering=options.get("steering", ()), ignore_policy=options.get("ignore_policy", False)
    )
    _fill_input(request, prompt, options)
    _fill_sampling(request.sampling, options)
    _fill_monitor(request.monitor, options)
    return request


def compare_request(prompt: str | None = None, **options: Unpack[CompareOptions]) -> pb.CompareRequest:
    request = pb.CompareRequest()
    _fill_input(request, prompt, options)
    _fill_sampling(request.sampling, options)
    _fill_monitor(request.monitor, options)
    for name, terms in (options.get("variants") or {}).items():
        request.variants.add(name=name, steering=terms)
    return request


def score_request(prompt: str | None = None, **options: Unpack[ScoreOptions]) -> pb.ScoreRequest:
    request = pb.ScoreRequest(
        response=options.get("response", ""),
        response_token_ids=options.get("response_token_ids", ()),
        steering=options.get("steering", ()),
        ignore_policy=options.get("ignore_policy", False),
    )
    _fill_input(request, prompt, options)
    if any(k in options for k in ("monitor", "token_scores", "stop_threshold", "monitor_disabled")):
        _fill_monitor(request.monitor, options)  # unset monitor means every direction with token scores
    return request


def put_direction_request(
    name: str = "",
    *,
    vectors: Mapping[int, Sequence[float]] | None = None,
    safetensors: bytes | None = None,
    path: str | Path | None = None,
    monitor_layer: int | None = None,
    description: str = "",
    strict: bool = False,
    removal: pb.Removal | None = None,
    file: bytes | None = None,
    format: str = "",
    feature: int | None = None,
    numbering: str = "",
    sae_config: str = "",
) -> pb.PutDirectionRequest:
    """Exactly one of `vectors` ({layer: values}), `safetensors` (file bytes), `path` (a .safetensors file) or
    `file` (any importable file's bytes, with `format`, `feature`, `numbering`, `sae_config` describing it)."""
    if path is not None:
        safetensors = Path(path).read_bytes()
    request = pb.PutDirectionRequest(name=name, description=description, strict=strict, format=format,
                                     numbering=numbering, sae_config=sae_config)
    if file is not None:
        request.file = file
    if feature is not None:
        request.feature = feature
    for layer, values in (vectors or {}).items():
        request.vectors.add(layer=layer, values=values)
    if safetensors is not None:
        request.safetensors = safetensors
    if monitor_layer is not None:
        request.monitor_layer = monitor_layer
    if removal is not None:
        request.removal.CopyFrom(removal)
    return request


def steering_policy(
    terms: Sequence[pb.SteeringTerm] = (), enforced: bool = False, alerts: Sequence[pb.AlertRule] = ()
) -> pb.SteeringPolicy:
    return pb.SteeringPolicy(terms=terms, enforced=enforced, alerts=alerts)


def _fill_input(
    request: pb.GenerateRequest | pb.CompareRequest | pb.ScoreRequest, prompt: str | None, options: _InputOptions
) -> None:
    if prompt is not None:
        request.prompt = prompt
    for message in options.get("messages", ()):
        request.messages.append(_chat_message(message))
    request.prompt_token_ids.extend(options.get("prompt_token_ids", ()))


def _chat_message(message: MessageLike) -> pb.ChatMessage:
    if isinstance(message, pb.ChatMessage):
        return message
    if isinstance(message, tuple):
        return pb.ChatMessage(role=message[0], content=message[1])
    return pb.ChatMessage(role=message["role"], content=message["content"])


def _fill_sampling(sampling: pb.SamplingParams, options: _SamplingOptions) -> None:
    # Only what was given is set, so the server's defaults (and its picking a seed) apply to the rest.
    if "max_new_tokens" in options:
        sampling.max_new_tokens = options["max_new_tokens"]
    if "temperature" in options:
        sampling.temperature = options["temperature"]
    if "top_p" in options:
        sampling.top_p = options["top_p"]
    if "top_k" in options:
        sampling.top_k = options["top_k"]
    if "seed" in options:
        sampling.seed = options["seed"]
    sampling.stop.extend(options.get("stop", ()))


def _fill_monitor(monitor: pb.MonitorOptions, options: _MonitorOptions) -> None:
    monitor.directions.extend(options.get("monitor", ()))
    monitor.token_scores = options.get("token_scores", False)
    monitor.disabled = options.get("monitor_disabled", False)
    if "stop_threshold" in options:
        monitor.stop_threshold = options["stop_threshold"]


def watch_request(
    directions: Sequence[str] = (),
    min_score: float | None = None,
    alerts_only: bool = False,
    buffer_size: int | None = None,
) -> pb.WatchMonitorRequest:
    """WatchMonitor's filter: events on these directions (empty: all), with a score >= `min_score`, with alerts."""
    request = pb.WatchMonitorRequest(directions=list(directions), alerts_only=alerts_only)
    if min_score is not None:
        request.min_score = min_score
    if buffer_size is not None:
        request.buffer_size = buffer_size
    return request
