"""ComputeDirection's protobuf <-> plain types (compute_types.py). As in decode.py, only what the message itself
shows is decided here (which recipe is set, enum values, defaults for unset fields, message sizes before converting
a large repeated field); every other rule is compute_job.check_compute_request's."""

from __future__ import annotations

from steering_client import pb

from ..compute_job import MAX_EXAMPLES
from ..compute_types import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_HELD_OUT_SHARE,
    DEFAULT_PERSONA_TOKENS,
    DEFAULT_TARGET_FPR,
    ComputeEvent,
    ComputeProgress,
    ComputeRequest,
    ContrastiveExample,
    PersonaPrompts,
    Pooling,
)
from ..errors import InvalidArgumentError
from ..rules import MAX_CHAT_MESSAGES
from ..types import ChatMessage, Prompt
from . import encode

__all__ = ["compute_event", "compute_request"]

_POOLINGS = {pb.POOLING_UNSPECIFIED: None, pb.POOLING_LAST_PROMPT: Pooling.LAST_PROMPT,
             pb.POOLING_RESPONSE_MEAN: Pooling.RESPONSE_MEAN}
_POOLINGS_TO_PB = {v: k for k, v in _POOLINGS.items() if v is not None}


def compute_request(msg: pb.ComputeDirectionRequest) -> ComputeRequest:
    if msg.pooling not in _POOLINGS:
        raise InvalidArgumentError("pooling", f"unknown pooling value {msg.pooling}")
    if len(msg.examples) > MAX_EXAMPLES:  # before converting them
        raise InvalidArgumentError("examples", f"at most {MAX_EXAMPLES} examples")
    persona = None
    if msg.HasField("persona"):
        p = msg.persona
        if len(p.questions) > MAX_EXAMPLES:
            raise InvalidArgumentError("persona.questions", f"at most {MAX_EXAMPLES} questions")
        persona = PersonaPrompts(
            questions=tuple(p.questions),
            positive_systems=tuple(p.positive_systems),
            negative_systems=tuple(p.negative_systems),
            max_new_tokens=p.max_new_tokens if p.HasField("max_new_tokens") else DEFAULT_PERSONA_TOKENS,
        )
    return ComputeRequest(
        name=msg.name,
        examples=tuple(_example(e, f"examples[{i}]") for i, e in enumerate(msg.examples)),
        persona=persona,
        pooling=_POOLINGS[msg.pooling],
        layers=tuple(msg.layers),
        target_fpr=msg.target_fpr if msg.HasField("target_fpr") else DEFAULT_TARGET_FPR,
        held_out_share=msg.held_out_share if msg.HasField("held_out_share") else DEFAULT_HELD_OUT_SHARE,
        seed=msg.seed,
        store=msg.store,
        return_file=msg.return_file,
        description=msg.description,
        bootstrap_resamples=msg.bootstrap_resamples if msg.HasField("bootstrap_resamples") else DEFAULT_BOOTSTRAP,
    )


def _example(e: pb.ContrastiveExample, where: str) -> ContrastiveExample:
    if len(e.messages) > MAX_CHAT_MESSAGES:
        raise InvalidArgumentError(f"{where}.messages", f"at most {MAX_CHAT_MESSAGES} messages")
    prompt = Prompt(
        text=e.prompt or None, messages=tuple(ChatMessage(role=m.role, content=m.content) for m in e.messages)
    )
    return ContrastiveExample(prompt=prompt, response=e.response, positive=e.positive)


def compute_event(event: ComputeEvent) -> pb.ComputeDirectionEvent:
    if isinstance(event, ComputeProgress):
        return pb.ComputeDirectionEvent(
            progress=pb.ComputeProgress(
                stage=event.stage, done=event.done, total=event.total, eta_seconds=event.eta_seconds
            )
        )
    result = pb.ComputeDirectionResult(
        direction=encode.direction(event.direction),
        layers=[
            pb.LayerSeparation(layer=s.layer, auroc=s.auroc, auroc_lo=s.auroc_lo, auroc_hi=s.auroc_hi,
                               cohens_d=s.cohens_d, norm=s.norm)
            for s in event.layers
        ],
        monitor_layer=event.monitor_layer,
        pooling=_POOLINGS_TO_PB[event.pooling],
        n_train=event.n_train,
        n_held_out=event.n_held_out,
        held_out_fpr=event.held_out_fpr,
        stored=event.stored,
        safetensors=event.safetensors,
    )
    return pb.ComputeDirectionEvent(result=result)
