"""ComputeDirection requests from Python values, and the JSONL example format (docs/directions.md).

One example per JSONL line: `{"prompt": "...", "response": "...", "label": "positive"}`, with `messages` (a list
of `{"role", "content"}`) instead of `prompt` for chat prompts, and `label` one of positive / negative (also
true / false, 1 / 0, pos / neg).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from ._proto.steering.v1 import steering_pb2 as pb

__all__ = [
    "POOLINGS",
    "ComputeOptions",
    "ExampleLike",
    "check_writable",
    "compute_direction_request",
    "example",
    "examples_from_jsonl",
    "options_from_args",
    "persona_from_json",
    "persona_prompts",
    "write_direction_file",
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


_PERSONA_KEYS = ("questions", "positive_systems", "negative_systems")


def persona_from_json(path: str | Path, max_new_tokens: int | None = None) -> pb.PersonaPrompts:
    """Read a persona file, `{"questions": [...], "positive_systems": [...], "negative_systems": [...]}`; anything
    else raises ValueError naming the file."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"--persona {path}: not JSON ({exc.msg})") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"--persona {path}: expected a JSON object with {', '.join(_PERSONA_KEYS)}")
    unknown = set(spec) - set(_PERSONA_KEYS)
    if unknown:
        raise ValueError(f"--persona {path}: unknown keys {sorted(unknown)} (use {', '.join(_PERSONA_KEYS)})")
    for key in _PERSONA_KEYS:
        value = spec.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"--persona {path}: {key} must be a list of strings")
    return persona_prompts(spec.get("questions", ()), spec.get("positive_systems", ()),
                           spec.get("negative_systems", ()), max_new_tokens)


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers {text}: expected comma-separated layer numbers, e.g. 2,3,4") from None


def options_from_args(args: argparse.Namespace) -> ComputeOptions:
    """ComputeOptions from the `direction compute` arguments that both command lines share (steering-client's
    and steering-server's): --examples or --persona, --pooling, --layers, --target-fpr, --held-out-share, --seed,
    --description, --out, and --store where the command has it. A bad file or value raises ValueError naming the
    flag; an unreadable file raises OSError."""
    options: ComputeOptions = {"store": bool(getattr(args, "store", False)), "return_file": args.out is not None,
                               "description": args.description}
    if args.examples:
        options["examples"] = examples_from_jsonl(args.examples)
    else:
        options["persona"] = persona_from_json(args.persona, args.max_new_tokens)
    if args.pooling:
        options["pooling"] = args.pooling
    if args.layers:
        options["layers"] = _layers(args.layers)
    if args.target_fpr is not None:
        options["target_fpr"] = args.target_fpr
    if args.held_out_share is not None:
        options["held_out_share"] = args.held_out_share
    if args.seed is not None:
        options["seed"] = args.seed
    return options


def check_writable(path: str | Path, flag: str = "--out") -> None:
    """Refuse an output path that cannot be written before any work is done (ValueError naming the flag): a
    direction computed for minutes must not be lost to a typo in the path."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path}: is a directory (give a file name, e.g. {p / 'direction.safetensors'})")
    existed = p.exists()
    try:
        with p.open("ab"):  # append: an existing file is left as it is until the result arrives
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None
    if not existed:
        p.unlink(missing_ok=True)


def write_direction_file(path: str | Path, data: bytes, flag: str = "--out") -> str | None:
    """Write the finished direction file to `path`; if that fails after all (the disk filled, the folder went
    away), save it to a temporary file instead and return a one-line message saying where it went (None when
    `path` was written)."""
    try:
        Path(path).write_bytes(data)
        return None
    except OSError as exc:
        why = exc.strerror or str(exc)
    fd, spare = tempfile.mkstemp(prefix=f"{Path(path).stem or 'direction'}-", suffix=".safetensors")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return f"{flag} {path}: cannot write there ({why}); the direction file was saved to {spare} instead"
