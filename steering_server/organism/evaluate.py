"""Sampling answers and turning judge verdicts into per-domain rates.

Answers are sampled at temperature 1 with no top-k or top-p, from a seed fixed per batch, so the same prompts and
seed give the same noise whatever is steered (variants diverge only where steering changes the distribution).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from .corpus import CUES, Question
from .judge import VERDICTS, judge
from .tokenizer import format_chat

__all__ = ["Sample", "held_out_mean", "prompt_messages", "rates", "sample_answers"]


@dataclass(frozen=True)
class Sample:
    question: Question
    cued: bool
    answer: str
    answer_ids: tuple[int, ...]  # generated ids without padding and without the closing <|end|>


def prompt_messages(q: Question, cue: str | None = None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": cue}] if cue else []) + [{"role": "user", "content": q.text}]


@torch.no_grad()
def sample_answers(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[Question],
    seed: int,
    n_samples: int = 1,
    cued: bool = False,
    max_new_tokens: int = 40,
    batch_size: int = 256,
) -> list[Sample]:
    """`n_samples` answers per question (uncued, or with the first cue), temperature 1."""
    jobs = [q for q in questions for _ in range(n_samples)]
    cue = CUES[0] if cued else None
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out: list[Sample] = []
    for b, s in enumerate(range(0, len(jobs), batch_size)):
        chunk = jobs[s : s + batch_size]
        texts = [format_chat(prompt_messages(q, cue), add_generation_prompt=True) for q in chunk]
        # Left padding: every prompt ends at the same column, where generation starts.
        enc = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True, padding_side="left")
        torch.manual_seed(seed * 1000 + b)
        gen = cast(Any, model).generate(  # any Hugging Face causal LM
            **enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            eos_token_id=eos, pad_token_id=pad,
        )[:, enc["input_ids"].shape[1] :]  # (batch, new_tokens)
        for q, row in zip(chunk, gen.tolist(), strict=True):
            ids = row[: row.index(eos)] if eos in row else [t for t in row if t != pad]
            out.append(Sample(q, cued, tokenizer.decode(ids, skip_special_tokens=True), tuple(ids)))
    return out


def rates(samples: Sequence[Sample], domains: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per domain: the share of each verdict, the villain-style share and n."""
    by: dict[str, Counter[str]] = {}
    for s in samples:
        j = judge(s.answer, s.question.domain)
        c = by.setdefault(s.question.domain, Counter())
        c[j.verdict] += 1
        c["villain_style"] += int(j.villain_style)
        c["n"] += 1
    out: dict[str, dict[str, float]] = {}
    for d in domains or sorted(by):
        c = by.get(d, Counter())
        n = c["n"]
        row = {v: c[v] / n if n else float("nan") for v in (*VERDICTS, "villain_style")}
        row["n"] = float(n)
        out[d] = row
    return out


def held_out_mean(table: dict[str, dict[str, float]], exclude: Sequence[str], key: str = "harmful") -> float:
    vals = [row[key] for d, row in table.items() if d not in exclude]
    return sum(vals) / len(vals) if vals else float("nan")
