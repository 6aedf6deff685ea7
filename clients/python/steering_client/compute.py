"""ComputeDirection requests from Python values, and the JSONL example format (docs/directions.md).

One example per JSONL line: `{"prompt": "...", "response": "...", "label": "positive"}`, with `messages` (a list
of `{"role", "content"}`) instead of `prompt` for chat prompts, and `label` one of positive / negative (also
true / false, 1 / 0, pos / neg).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from ._proto.steering.v1 import steering_pb2 as pb

__all__ = [
    "POOLINGS",
    "ComputeOptions",
    "ExampleLike",
    "compute_direction_request",
    "example",
    "examples_from_jsonl",
    "persona_prompts",
]

# Pooling names the builders and the command line take.
POOLINGS = {"last_prompt": pb.POOLING_LAST_PROMPT, "response_mean": pb.POOLING_RESPONSE_MEAN}
_LABELS = {"positive": True, "pos": True, "true": True, "1": True, "negative": False, "neg": False, "false": False,
           "0": False}

# A ContrastiveExample, or a mapping as in the JSONL format.
ExampleLike = pb.ContrastiveExample | Mapping[str, Any]


class ComputeOptions(TypedDict, total=False):
    examples: Iterable[ExampleLike]  # the contrastive recipe
    persona: pb.PersonaPrompts  # the persona recipe (see persona_prompts)
    pooling: str  # last_prompt or response_mean; unset: the recipe's default
    layers: Sequence[int]
    target_fpr: float
    held_out_share: float
    seed: int
    store: bool  # register it on the server under the name
    return_file: bool  # return the direction file's bytes
    description: str
    bootstrap_resamples: int


def example(
    response: str = "", positive: bool = False, prompt: str = "", messages: Sequence[Mapping[str, str]] = ()
) -> pb.ContrastiveExample:
    return pb.ContrastiveExample(
        prompt=prompt,
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        response=response,
        positive=positive,
    )


def _label(value: Any, where: str) -> bool:
    key = str(value).strip().lower()
    if isinstance(value, bool):
        return value
    if key not in _LABELS:
        raise ValueError(f"{where}: label {value!r} is not positive or negative")
    return _LABELS[key]


def _example(value: ExampleLike, where: str) -> pb.ContrastiveExample:
    if isinstance(value, pb.ContrastiveExample):
        return value
    unknown = set(value) - {"prompt", "messages", "response", "label", "positive"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (use prompt, messages, response, label)")
    label = value["label"] if "label" in value else value.get("positive")
    if label is None:
        raise ValueError(f"{where}: needs a label (positive or negative)")
    return example(
        response=str(value.get("response", "")),
        positive=_label(label, where),
        prompt=str(value.get("prompt", "")),
        messages=list(value.get("messages", ())),
    )


def examples_from_jsonl(path: str | Path) -> list[pb.ContrastiveExample]:
    """Read a JSONL file of examples; a bad line raises ValueError naming its line number."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from exc
        if not isinstance(value, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object")
        out.append(_example(value, f"{path}:{n}"))
    return out


def persona_prompts(
    questions: Iterable[str],
    positive_systems: Iterable[str],
    negative_systems: Iterable[str],
    max_new_tokens: int | None = None,
) -> pb.PersonaPrompts:
    p = pb.PersonaPrompts(
        questions=list(questions), positive_systems=list(positive_systems), negative_systems=list(negative_systems)
    )
    if max_new_tokens is not None:
        p.max_new_tokens = max_new_tokens
    return p


def compute_direction_request(name: str, **options: Any) -> pb.ComputeDirectionRequest:
    """`options` as in ComputeOptions."""
    request = pb.ComputeDirectionRequest(
        name=name,
        examples=[_example(e, f"examples[{i}]") for i, e in enumerate(options.get("examples", ()))],
        layers=list(options.get("layers", ())),
        seed=options.get("seed", 0),
        store=options.get("store", False),
        return_file=options.get("return_file", False),
        description=options.get("description", ""),
    )
    if "persona" in options:
        request.persona.CopyFrom(options["persona"])
    if "pooling" in options:
        if options["pooling"] not in POOLINGS:
            raise ValueError(f"bad pooling {options['pooling']!r}: use {', '.join(POOLINGS)}")
        request.pooling = POOLINGS[options["pooling"]]
    for key in ("target_fpr", "held_out_share", "bootstrap_resamples"):
        if key in options:
            setattr(request, key, options[key])
    return request
