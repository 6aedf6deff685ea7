"""The engine's plain results -> protobuf responses."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from steering_client import pb

from .. import __version__
from ..directions import Direction
from ..monitor_feed import MonitorEvent
from ..types import (
    Alert,
    AlertAction,
    AlertRule,
    CompareResult,
    ConditionScope,
    DirectionScores,
    EngineLimits,
    GenerationResult,
    ModelInfo,
    ScoreResult,
    SteeringMode,
    SteeringPolicy,
    SteeringPositions,
    SteeringTerm,
    StopReason,
    TokenEvent,
)

__all__ = [
    "ACTIONS_TO_PB",
    "POSITIONS_TO_PB",
    "SCOPES_TO_PB",
    "compare_response",
    "direction",
    "generate_response",
    "model_info",
    "monitor_event",
    "put_direction_response",
    "score_response",
    "steering_policy",
    "stream_final",
    "stream_token",
]

_MODES = {SteeringMode.ABLATE: pb.ABLATE, SteeringMode.ADD: pb.ADD, SteeringMode.CLAMP: pb.CLAMP}
# The one table between the two enums (decode.py reads it backwards).
POSITIONS_TO_PB = {
    SteeringPositions.ALL: pb.ALL_POSITIONS,
    SteeringPositions.PROMPT: pb.PROMPT_POSITIONS,
    SteeringPositions.LAST_PROMPT: pb.LAST_PROMPT_POSITION,
    SteeringPositions.GENERATED: pb.GENERATED_POSITIONS,
}
SCOPES_TO_PB = {ConditionScope.PROMPT: pb.PROMPT_SCORE, ConditionScope.RUNNING: pb.RUNNING_SCORE}
ACTIONS_TO_PB = {AlertAction.RECORD: pb.RECORD, AlertAction.STOP: pb.STOP, AlertAction.STEER: pb.STEER}
_STOP_REASONS = {
    StopReason.MAX_TOKENS: pb.MAX_TOKENS,
    StopReason.EOS_TOKEN: pb.EOS_TOKEN,
    StopReason.STOP_SEQUENCE: pb.STOP_SEQUENCE,
    StopReason.CANCELLED: pb.CANCELLED,
    StopReason.MONITOR_ALERT: pb.MONITOR_ALERT,
    StopReason.ERROR: pb.ERROR,
}


def generate_response(result: GenerationResult, seed: int, stream: bool = False) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        text_tail=result.text_tail if stream else "",
        text=result.text,
        token_ids=result.token_ids,
        stop_reason=_STOP_REASONS[result.stop_reason],
        usage=pb.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=len(result.token_ids)),
        monitor=_scores(result.monitor),
        request_id=result.request_id,
        seed=seed,
        alerts=[_alert(a) for a in result.alerts],
    )


def stream_token(event: TokenEvent) -> pb.GenerateStreamResponse:
    token = pb.TokenEvent(index=event.index, token_id=event.token_id, text_delta=event.text_delta, scores=event.scores)
    return pb.GenerateStreamResponse(token=token)


def stream_final(result: GenerationResult, seed: int) -> pb.GenerateStreamResponse:
    return pb.GenerateStreamResponse(final=generate_response(result, seed, stream=True))


def compare_response(result: CompareResult, seed: int) -> pb.CompareResponse:
    response = pb.CompareResponse(seed=seed)
    for v in result.variants:
        response.variants.add(name=v.name, result=generate_response(v.result, seed), diverges_at=v.diverges_at)
    return response


def score_response(result: ScoreResult) -> pb.ScoreResponse:
    return pb.ScoreResponse(
        usage=pb.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=len(result.response_token_ids)),
        response_token_ids=result.response_token_ids,
        monitor=_scores(result.monitor),
        alerts=[_alert(a) for a in result.alerts],
    )


def direction(d: Direction, include_vectors: bool = False) -> pb.Direction:
    message = pb.Direction(
        name=d.name,
        layers=d.layers,
        monitor_layer=d.monitor_layer,
        hidden_size=d.hidden_size,
        calibrated=d.calibrated,
        provenance=pb.Provenance(
            model_id=d.provenance.model_id,
            config_hash=d.provenance.config_hash,
            tokenizer_hash=d.provenance.tokenizer_hash,
        ),
        method=d.method,
        n_examples=d.n_examples,
        created_at=d.created_at,
        description=d.description,
        removal=pb.Removal(mode=_MODES[d.removal.mode], strength=d.removal.strength,
                           positions=POSITIONS_TO_PB[d.removal.positions], layers=list(d.removal.layers)),
        clamp_layers=sorted(d.layer_calibration),
    )
    for pooling, cal in d.calibration.items():
        message.calibration[pooling].CopyFrom(
            pb.Calibration(mu=cal.mu, sigma=cal.sigma, threshold=cal.threshold, target_fpr=cal.target_fpr, n=cal.n)
        )
    if include_vectors:
        for layer in d.layers:
            message.vectors.add(layer=layer, values=d.vectors[layer].tolist())
    if d.feature is not None:
        f = d.feature
        message.feature.CopyFrom(pb.SaeFeature(index=f.index, activation=f.activation, bias=f.bias,
                                               threshold=f.threshold, b_dec_proj=f.b_dec_proj, source=f.source))
        if include_vectors:
            message.feature.encoder.extend(f.encoder.tolist())
    return message


def put_direction_response(stored: Direction, given: Direction) -> pb.PutDirectionResponse:
    warnings = []
    if given.calibrated and not stored.calibrated:
        warnings.append(
            f"calibration dropped: the direction was made for model {given.provenance.model_id!r} "
            "(its config or tokenizer differs from the served model's); scores will be raw projections"
        )
    return pb.PutDirectionResponse(direction=direction(stored), warnings=warnings)


def steering_policy(policy: SteeringPolicy) -> pb.SteeringPolicy:
    return pb.SteeringPolicy(
        terms=[_term(t) for t in policy.terms], enforced=policy.enforced, alerts=[_rule(r) for r in policy.alerts]
    )


def model_info(info: ModelInfo, limits: EngineLimits) -> pb.ModelInfoResponse:
    return pb.ModelInfoResponse(
        model_id=info.model_id,
        architecture=info.architecture,
        num_layers=info.num_layers,
        hidden_size=info.hidden_size,
        vocab_size=info.vocab_size,
        dtype=info.dtype,
        device=info.device,
        max_context=info.max_context,
        limits=pb.Limits(
            max_new_tokens=limits.max_new_tokens,
            max_prompt_tokens=limits.max_prompt_tokens,
            max_queued=limits.max_queued,
            max_variants=limits.max_variants,
            max_directions=limits.max_directions,
            allow_red_team=limits.allow_red_team,
        ),
        server_version=__version__,
        serving=pb.ServingSettings(**dataclasses.asdict(info.serving)),
    )


def _term(term: SteeringTerm) -> pb.SteeringTerm:
    message = pb.SteeringTerm(direction=term.direction, mode=_MODES[term.mode], strength=term.strength,
                              layers=term.layers, positions=POSITIONS_TO_PB[term.positions])
    if term.condition is not None:
        c = term.condition
        message.condition.CopyFrom(
            pb.SteeringCondition(direction=c.direction, threshold=c.threshold, scope=SCOPES_TO_PB[c.scope])
        )
    return message


def _rule(rule: AlertRule) -> pb.AlertRule:
    return pb.AlertRule(direction=rule.direction, threshold=rule.threshold, scope=SCOPES_TO_PB[rule.scope],
                        action=ACTIONS_TO_PB[rule.action], steering=[_term(t) for t in rule.steering])


def _alert(alert: Alert) -> pb.Alert:
    return pb.Alert(direction=alert.direction, scope=SCOPES_TO_PB[alert.scope], score=alert.score,
                    threshold=alert.threshold, action=ACTIONS_TO_PB[alert.action], token_index=alert.token_index,
                    source=alert.source)


def _scores(scores: Iterable[DirectionScores]) -> list[pb.DirectionScores]:
    return [
        pb.DirectionScores(
            direction=s.direction,
            layer=s.layer,
            prompt_score=s.prompt_score,
            response_score=s.response_score,
            token_scores=s.token_scores,
            max_score=s.max_score,
            calibrated=s.calibrated,
            post_intervention=s.post_intervention,
        )
        for s in scores
    ]


def monitor_event(event: MonitorEvent, dropped: int) -> pb.MonitorEvent:
    """A feed event for one watcher; `dropped`: the events it lost since the previous one it received."""
    return pb.MonitorEvent(
        request_id=event.request_id,
        time=event.time,
        rpc=event.rpc,
        front_end=event.front_end,
        variant=event.variant,
        monitor=_scores(event.scores),
        alerts=[_alert(a) for a in event.alerts],
        steering=[_term(t) for t in event.steering],
        policy_applied=event.policy_applied,
        policy_enforced=event.policy_enforced,
        stop_reason=_STOP_REASONS[event.stop_reason] if event.stop_reason is not None else pb.STOP_REASON_UNSPECIFIED,
        usage=pb.Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens),
        dropped=dropped,
    )
