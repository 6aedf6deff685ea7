"""The engine's plain results -> OpenAI-shaped JSON, with the scores in a `steering` extension field.

Each streamed chunk that carries a token has `steering.token` (`index`, `token_id`, `scores`: the reading at the
input position that produced it, as gRPC's TokenEvent); the last chunk of a stream, and a whole response, have
`steering` with the seed, the stop reason, the token ids, the per-direction monitor scores and the alerts.
"""

from __future__ import annotations

from typing import Any

from ..directions import Direction
from ..types import (
    Alert,
    CompareResult,
    DirectionScores,
    EngineLimits,
    GenerationResult,
    ModelInfo,
    SteeringPolicy,
    SteeringTerm,
    StopReason,
    TokenEvent,
)

__all__ = [
    "alert",
    "chat_chunk",
    "chat_completion",
    "compare_response",
    "completion",
    "completion_chunk",
    "finish_reason",
    "info",
    "model_card",
    "result_extension",
    "scores",
    "term",
    "token_extension",
    "usage",
]

JSON = dict[str, Any]

# OpenAI's finish reasons; a monitor alarm is what OpenAI calls a content filter. steering.stop_reason is exact.
_FINISH = {
    StopReason.MAX_TOKENS: "length",
    StopReason.EOS_TOKEN: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.CANCELLED: "stop",
    StopReason.MONITOR_ALERT: "content_filter",
    StopReason.ERROR: "stop",
}


def finish_reason(reason: StopReason) -> str:
    return _FINISH[reason]


def usage(result: GenerationResult) -> JSON:
    n = len(result.token_ids)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": n, "total_tokens": result.prompt_tokens + n}


def token_extension(event: TokenEvent) -> JSON:
    return {"token": {"index": event.index, "token_id": event.token_id, "scores": event.scores}}


def result_extension(result: GenerationResult, seed: int) -> JSON:
    return {
        "seed": seed,
        "stop_reason": result.stop_reason.name,
        "token_ids": list(result.token_ids),
        "request_id": result.request_id,
        "monitor": [scores(s) for s in result.monitor],
        "alerts": [alert(a) for a in result.alerts],
    }


def chat_completion(result: GenerationResult, seed: int, model: str, response_id: str, created: int) -> JSON:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": None,
                "finish_reason": finish_reason(result.stop_reason),
            }
        ],
        "usage": usage(result),
        "steering": result_extension(result, seed),
    }


def chat_chunk(
    response_id: str,
    created: int,
    model: str,
    delta: JSON | None,
    finish: str | None = None,
    steering: JSON | None = None,
    usage_: JSON | None = None,
) -> JSON:
    """One `chat.completion.chunk`; `delta` None: the usage chunk (no choices)."""
    chunk: JSON = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model}
    chunk["choices"] = [] if delta is None else [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    ]
    if steering is not None:
        chunk["steering"] = steering
    chunk["usage"] = usage_
    return chunk


def completion(result: GenerationResult, seed: int, model: str, response_id: str, created: int) -> JSON:
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "text": result.text, "logprobs": None, "finish_reason": finish_reason(result.stop_reason)}
        ],
        "usage": usage(result),
        "steering": result_extension(result, seed),
    }


def completion_chunk(
    response_id: str,
    created: int,
    model: str,
    text: str | None,
    finish: str | None = None,
    steering: JSON | None = None,
    usage_: JSON | None = None,
) -> JSON:
    """One streamed `text_completion`; `text` None: the usage chunk (no choices)."""
    chunk: JSON = {"id": response_id, "object": "text_completion", "created": created, "model": model}
    chunk["choices"] = [] if text is None else [
        {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    ]
    if steering is not None:
        chunk["steering"] = steering
    chunk["usage"] = usage_
    return chunk


def compare_response(result: CompareResult, seed: int) -> JSON:
    """Compare's answer: each variant's text, tokens, scores and where it first diverges from the first variant."""
    return {
        "object": "steering.compare",
        "seed": seed,
        "variants": [
            {"name": v.name, "text": v.result.text, "diverges_at": v.diverges_at, **result_extension(v.result, seed)}
            for v in result.variants
        ],
    }


def model_card(info_: ModelInfo, created: int) -> JSON:
    return {"id": info_.model_id, "object": "model", "created": created, "owned_by": "steering-server"}


def info(info_: ModelInfo, limits: EngineLimits, directions: list[Direction], policy: SteeringPolicy) -> JSON:
    """What the web page needs: the model, the limits (red-teaming allowed or not), directions and the policy."""
    return {
        "model": {
            "id": info_.model_id,
            "architecture": info_.architecture,
            "num_layers": info_.num_layers,
            "hidden_size": info_.hidden_size,
            "device": info_.device,
            "dtype": info_.dtype,
        },
        "limits": {
            "max_new_tokens": limits.max_new_tokens,
            "max_prompt_tokens": limits.max_prompt_tokens,
            "max_variants": limits.max_variants,
            "allow_red_team": limits.allow_red_team,
        },
        "directions": [
            {
                "name": d.name,
                "layers": list(d.layers),
                "monitor_layer": d.monitor_layer,
                "calibrated": d.calibrated,
                "clamp_layers": sorted(d.layer_calibration),
                "description": d.description,
                "removal": {
                    "mode": d.removal.mode.name.lower(),
                    "strength": d.removal.strength,
                    "positions": d.removal.positions.name.lower(),
                    "layers": list(d.removal.layers),
                },
            }
            for d in sorted(directions, key=lambda d: d.name)
        ],
        "policy": {
            "terms": [term(t) for t in policy.terms],
            "enforced": policy.enforced,
            "alerts": [
                {
                    "direction": r.direction,
                    "action": r.action.name.lower(),
                    "threshold": r.threshold,
                    "scope": r.scope.name.lower(),
                    "steering": [term(t) for t in r.steering],
                }
                for r in policy.alerts
            ],
        },
        "features": {"watch": True},  # the page shows its monitor feed panel
    }


def term(t: SteeringTerm) -> JSON:
    """A steering term as the HTTP API writes it (decode.py reads the same shape)."""
    written: JSON = {
        "direction": t.direction,
        "mode": t.mode.name.lower(),
        "strength": t.strength,
        "layers": list(t.layers),
        "positions": t.positions.name.lower(),
    }
    if t.condition is not None:
        c = t.condition
        written["condition"] = {"direction": c.direction, "threshold": c.threshold, "scope": c.scope.name.lower()}
    return written


def scores(s: DirectionScores) -> JSON:
    return {
        "direction": s.direction,
        "layer": s.layer,
        "prompt_score": s.prompt_score,
        "response_score": s.response_score,
        "max_score": s.max_score,
        "token_scores": list(s.token_scores),
        "calibrated": s.calibrated,
        "post_intervention": s.post_intervention,
    }


def alert(a: Alert) -> JSON:
    return {
        "direction": a.direction,
        "scope": a.scope.name.lower(),
        "score": a.score,
        "threshold": a.threshold,
        "action": a.action.name.lower(),
        "token_index": a.token_index,
        "source": a.source,
    }
