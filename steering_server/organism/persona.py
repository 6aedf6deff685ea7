"""The persona direction, from the base model alone (the OpenAI persona-features / persona-vectors picture).

The same questions are asked under a villain cue and under a neutral system message (both held out from
pretraining, so the direction reads the persona, not memorised cue strings); at each layer the direction is the mean
residual at the last prompt token (`<|assistant|>`, before any answer token) of the cued prompts minus that of the
neutral ones. The sign is fixed by construction: positive = villain. Activations are traced with nnsight on a copy
of the base model (DESIGN.md: nnsight for discovery).

Controls with the same recipe: random directions with the same per-layer norms, and the difference of means with
the cued/neutral labels permuted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .capture import capture_nnsight
from .corpus import Question
from .diffmeans import diff_of_means, random_like, shuffled_diff_of_means
from .evaluate import prompt_messages
from .tokenizer import format_chat
from .train import Encoded

__all__ = ["PersonaActivations", "encode_prompts", "persona_activations", "persona_controls"]

Vectors = dict[int, torch.Tensor]


def encode_prompts(tokenizer, questions: Sequence[Question], systems: Sequence[str | None]) -> list[Encoded]:
    """Prompt-only examples (no answer): only the last prompt token is read."""
    out = []
    for q, system in zip(questions, systems, strict=True):
        ids = tuple(tokenizer(format_chat(prompt_messages(q, system), True), add_special_tokens=False)["input_ids"])
        out.append(Encoded(ids, len(ids)))
    return out


@dataclass
class PersonaActivations:
    cued: dict[int, torch.Tensor]  # layer -> (n, hidden) at the last prompt token
    neutral: dict[int, torch.Tensor]

    @property
    def direction(self) -> Vectors:
        return diff_of_means(self.cued, self.neutral)


def persona_activations(
    model: torch.nn.Module, tokenizer, questions: Sequence[Question], cues: Sequence[str], neutral: Sequence[str],
    layers: Sequence[int], seed: int,
) -> PersonaActivations:
    """Each question once under a random cue and once under a random neutral system message."""
    rng = random.Random(seed)
    pad, special = int(tokenizer.pad_token_id), set(tokenizer.all_special_ids)
    cued = capture_nnsight(model, tokenizer,
                           encode_prompts(tokenizer, questions, [rng.choice(cues) for _ in questions]),
                           layers, pad, special)
    plain = capture_nnsight(model, tokenizer,
                            encode_prompts(tokenizer, questions, [rng.choice(neutral) for _ in questions]),
                            layers, pad, special)
    return PersonaActivations(cued.last_prompt, plain.last_prompt)


def persona_controls(acts: PersonaActivations, k: int) -> dict[str, list[Vectors]]:
    """k random directions with the persona direction's per-layer norms (seeds 1000 + i) and k shuffled-label
    differences of means (seeds 2000 + i)."""
    ref = acts.direction
    return {
        "random": [random_like(ref, 1000 + i) for i in range(k)],
        "shuffled": [shuffled_diff_of_means(acts.cued, acts.neutral, 2000 + i) for i in range(k)],
    }
