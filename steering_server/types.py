"""Plain request and result types shared by the engine and the service.

The engine speaks only these dataclasses; the gRPC layer converts protobuf to and from them at the edge.
Score semantics (DESIGN.md "Monitor"): a score belongs to an *input position*. `prompt_score` is read at the
last prompt token; `token_scores[i]` is read at the position where generated token i was fed back, so the
last generated token (never fed back) has no score and `len(token_scores) == len(token_ids) - 1`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Alert",
    "AlertAction",
    "AlertRule",
    "ChatMessage",
    "CompareRequest",
    "CompareResult",
    "ConditionScope",
    "DirectionScores",
    "EngineLimits",
    "EngineStats",
    "GenerationRequest",
    "GenerationResult",
    "ModelInfo",
    "MonitorOptions",
    "Prompt",
    "RequestTiming",
    "SamplingParams",
    "ScoreRequest",
    "ScoreResult",
    "ServingSettings",
    "SteeringCondition",
    "SteeringMode",
    "SteeringPolicy",
    "SteeringPositions",
    "SteeringTerm",
    "StopReason",
    "TokenEvent",
    "Variant",
    "VariantResult",
]


class SteeringMode(enum.Enum):
    """How a direction moves the hidden state h (d = v/|v|): see DESIGN.md "Steering and monitoring semantics"."""

    ABLATE = 1  # h <- h - a (h.d) d
    ADD = 2  # h <- h + a v
    CLAMP = 3  # h <- h - ((h.d) - c) d, c in calibrated z units when calibrated


class SteeringPositions(enum.Enum):
    """Which positions of a request a term steers. A persona is read at the last prompt token, before any answer
    token (DESIGN.md "The science it serves"): steering only the prompt, or only that token, moves what the model
    is about to do without editing the words it then writes."""

    ALL = 1  # every position
    PROMPT = 2  # the prompt's positions; generated tokens are not steered
    LAST_PROMPT = 3  # the last prompt token only
    GENERATED = 4  # generated tokens only

    @property
    def classes(self) -> tuple[int, ...]:
        """The position classes it covers: 0 = prompt before its last token, 1 = the last prompt token,
        2 = generated tokens (steering_server.runtime.position_class)."""
        return {1: (0, 1, 2), 2: (0, 1), 3: (1,), 4: (2,)}[self.value]


class ConditionScope(enum.Enum):
    """Which score a condition or an alert rule watches."""

    PROMPT = 1  # the score at the last prompt token (last_prompt calibration)
    RUNNING = 2  # the score at each fed-back generated token (token calibration)


class AlertAction(enum.Enum):
    RECORD = 1  # record the alert and go on
    STOP = 2  # stop with MONITOR_ALERT
    STEER = 3  # apply the rule's steering from then on (conditional steering)


class StopReason(enum.Enum):
    MAX_TOKENS = 1
    EOS_TOKEN = 2
    STOP_SEQUENCE = 3
    CANCELLED = 4
    MONITOR_ALERT = 5
    ERROR = 6


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class Prompt:
    """Exactly one of text, messages (rendered with the chat template) or token_ids."""

    text: str | None = None
    messages: tuple[ChatMessage, ...] = ()
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy (argmax)
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class SteeringCondition:
    """Conditional steering (CAST): a term steers a request only once its score on `direction` reaches `threshold`
    (z units when calibrated). PROMPT: decided at the last prompt token, then the generated tokens are steered.
    RUNNING: latched at the first fed-back generated token whose score reaches it, steered from that token on."""

    direction: str
    threshold: float
    scope: ConditionScope = ConditionScope.PROMPT


@dataclass(frozen=True)
class SteeringTerm:
    direction: str
    mode: SteeringMode
    strength: float
    # Layers to steer; empty means the default: every layer of the direction at or above its monitor layer (CLAMP:
    # the monitor layer alone, planning._default_layers).
    layers: tuple[int, ...] = ()
    positions: SteeringPositions = SteeringPositions.ALL
    condition: SteeringCondition | None = None  # None: always steers


@dataclass(frozen=True)
class AlertRule:
    """A server-wide alert rule (SteeringPolicy.alerts). `threshold` None: the direction's calibrated threshold for
    the scope's pooling. STEER applies `steering` (empty: the direction's removal recipe) conditioned on the rule."""

    direction: str
    action: AlertAction
    threshold: float | None = None
    scope: ConditionScope = ConditionScope.RUNNING
    steering: tuple[SteeringTerm, ...] = ()


@dataclass(frozen=True)
class Alert:
    """One alert a request raised. `token_index` is i of token_scores[i] for RUNNING, None for PROMPT."""

    direction: str
    scope: ConditionScope
    score: float
    threshold: float
    action: AlertAction
    token_index: int | None = None
    source: str = "policy"  # "policy" (an AlertRule) or "request" (MonitorOptions.stop_threshold)


@dataclass(frozen=True)
class MonitorOptions:
    # Directions to monitor; empty means every registered direction.
    directions: tuple[str, ...] = ()
    enabled: bool = True  # False: read no direction at all
    token_scores: bool = False  # return per-position scores in the final result
    # Alarm: stop with MONITOR_ALERT when a token's score reaches this (z units if calibrated); None = off.
    stop_threshold: float | None = None


@dataclass(frozen=True)
class GenerationRequest:
    prompt: Prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    steering: tuple[SteeringTerm, ...] = ()
    monitor: MonitorOptions = field(default_factory=MonitorOptions)
    # True: apply no server policy (refused by the engine when the policy is enforced).
    ignore_policy: bool = False


@dataclass(frozen=True)
class DirectionScores:
    """Monitor readings of one direction at its monitor layer for one request."""

    direction: str
    layer: int
    prompt_score: float  # projection h.d at the last prompt token (z when calibrated)
    response_score: float | None  # mean over fed-back generated positions; None when there were none
    token_scores: tuple[float, ...]  # per fed-back generated position (filled when asked)
    calibrated: bool  # scores are z = (p - mu) / sigma
    post_intervention: bool  # steering below the monitor layer changed what the monitor saw
    max_score: float | None = None  # max over fed-back generated positions


@dataclass(frozen=True)
class TokenEvent:
    """One generated token as it is streamed. `scores` maps direction name to the reading at the input position
    that produced this token (the last prompt token for index 0, generated token index-1 after)."""

    index: int
    token_id: int
    text_delta: str
    scores: dict[str, float]


@dataclass(frozen=True)
class RequestTiming:
    """When one engine request passed each stage, in `time.monotonic()` seconds; the service turns them into latencies
    (service/metrics.py). None: the request never got there (cancelled while it waited)."""

    admitted: float  # accepted by the engine (after its prompt was tokenized and checked)
    scheduled: float | None = None  # first put into a batch: queue time = scheduled - admitted
    token_times: tuple[float, ...] = ()  # when each generated token reached the stream (tokens of one step share one)
    finished: float | None = None


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: tuple[int, ...]
    stop_reason: StopReason
    prompt_tokens: int
    monitor: tuple[DirectionScores, ...]
    request_id: str = ""
    # Text that no TokenEvent carried (held back while it could still begin a stop string): a stream's deltas
    # followed by text_tail equal `text`.
    text_tail: str = ""
    alerts: tuple[Alert, ...] = ()  # in the order they fired
    # Some term steered: an unconditional one, a STEER rule that fired, or a term with its own condition (counted
    # whether or not its device gate fired: it is not read back).
    steered: bool = False
    timing: RequestTiming | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    steering: tuple[SteeringTerm, ...]


@dataclass(frozen=True)
class CompareRequest:
    prompt: Prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Empty means the defaults: unsteered, and the server policy (or ABLATE 1 on the monitored direction).
    variants: tuple[Variant, ...] = ()
    monitor: MonitorOptions = field(default_factory=MonitorOptions)


@dataclass(frozen=True)
class VariantResult:
    name: str
    result: GenerationResult
    # Index of the first generated token that differs from the first variant's; None when identical.
    diverges_at: int | None


@dataclass(frozen=True)
class CompareResult:
    variants: tuple[VariantResult, ...]


@dataclass(frozen=True)
class ScoreRequest:
    """Prompt plus a response: the scores Generate would have reported had it generated `response`."""

    prompt: Prompt
    response_text: str | None = None
    response_token_ids: tuple[int, ...] = ()
    steering: tuple[SteeringTerm, ...] = ()
    monitor: MonitorOptions = field(default_factory=lambda: MonitorOptions(token_scores=True))
    ignore_policy: bool = False


@dataclass(frozen=True)
class ScoreResult:
    prompt_tokens: int
    response_token_ids: tuple[int, ...]
    monitor: tuple[DirectionScores, ...]
    steered: bool = False
    # The policy's alert rules on these scores, each with its rule's action; Score only records (nothing stops or
    # steers). RUNNING: token_index i of the first response reading (token_scores[i]) that reaches the threshold.
    alerts: tuple[Alert, ...] = ()


@dataclass(frozen=True)
class ServingSettings:
    """What the batching engine got (from `serve` flags; the cache after transformers rounded it to sectors)."""

    kv_cache_tokens: int = 0  # num_blocks * page_size
    num_blocks: int = 0
    page_size: int = 0
    max_batch_tokens: int = 0
    max_requests_per_batch: int = 0
    attn_implementation: str = ""
    compiled: bool = False  # torch.compile of the batched forward
    cuda_graphs: bool = False


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    dtype: str
    device: str
    max_context: int
    serving: ServingSettings = field(default_factory=ServingSettings)


@dataclass(frozen=True)
class SteeringPolicy:
    """The server-wide default steering, applied to requests that bring none. `enforced`: requests cannot opt
    out, and their own terms are added to the policy's rather than replacing them."""

    terms: tuple[SteeringTerm, ...] = ()
    enforced: bool = False
    alerts: tuple[AlertRule, ...] = ()  # applied to every request, ignore_policy included (monitoring)


@dataclass(frozen=True)
class EngineLimits:
    max_new_tokens: int = 1024
    max_prompt_tokens: int = 4096
    max_queued: int = 256  # admitted but unfinished requests; one more gets RESOURCE_EXHAUSTED
    max_variants: int = 8
    max_directions: int = 16  # rows of the preallocated device direction table
    allow_red_team: bool = False  # allow ADD with positive strength along a registered direction


@dataclass(frozen=True)
class EngineStats:
    running: int  # requests inside the batching manager
    queued: int  # admitted requests (running included) not yet finished
    forward_passes: int
    generated_tokens: int
    waiting: int = 0  # of `running`, those not yet scheduled into a batch
