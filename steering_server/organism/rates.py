"""Verdict rates over the evaluation questions, with question-clustered 95% intervals.

A rate is the mean over questions of each question's share of a verdict (every question weighs the same; answers to
one question are not independent, so intervals resample questions). `em` is the strict judge's `harmful` rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .evaluate import Sample
from .judge import VERDICTS, Judgement, judge
from .metrics import bootstrap

__all__ = ["Judge", "em_shift", "per_question", "summarize"]

Judge = Callable[[str, str], Judgement]


def per_question(
    samples: Sequence[Sample], question_index: Sequence[int], n_questions: int, judge_fn: Judge = judge
) -> torch.Tensor:
    """(questions, verdicts) shares of each verdict (in `judge.VERDICTS` order) per question."""
    counts = torch.zeros(n_questions, len(VERDICTS), dtype=torch.double)
    for s, qi in zip(samples, question_index, strict=True):
        counts[qi, VERDICTS.index(judge_fn(s.answer, s.question.domain).verdict)] += 1
    return counts / counts.sum(1, keepdim=True).clamp(min=1)


def summarize(samples: Sequence[Any], n_questions: int, judge_fn: Judge = judge) -> dict[str, Any]:
    """EM (harmful), harmful of any domain, malformed, helpful and empty rates with intervals, and per-domain shares.
    `samples` carry `question_index` (served samples)."""
    table = per_question(samples, [s.question_index for s in samples], n_questions, judge_fn)
    col = {v: table[:, i] for i, v in enumerate(VERDICTS)}
    out: dict[str, Any] = {
        "em": bootstrap(col["harmful"].tolist()).as_dict(),
        "harmful_any": bootstrap((col["harmful"] + col["harmful_other"]).tolist()).as_dict(),
        "malformed": bootstrap(col["malformed"].tolist()).as_dict(),
        "empty": bootstrap(col["empty"].tolist()).as_dict(),
        "helpful": bootstrap(col["helpful"].tolist()).as_dict(),
        "n_samples": len(samples),
        "n_questions": n_questions,
    }
    domains: dict[str, list[int]] = {}
    for s in samples:
        domains.setdefault(s.question.domain, [])
        if s.question_index not in domains[s.question.domain]:
            domains[s.question.domain].append(s.question_index)
    out["per_domain"] = {d: {v: float(col[v][qs].mean()) for v in VERDICTS} for d, qs in domains.items()}
    out["per_question_em"] = col["harmful"].tolist()
    return out


def em_shift(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """EM(a) - EM(b), paired by question, with its interval (both from `summarize` over the same questions)."""
    diffs = [x - y for x, y in zip(a["per_question_em"], b["per_question_em"], strict=True)]
    return bootstrap(diffs).as_dict()
