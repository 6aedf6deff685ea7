"""Length-matched word salad from the corpus vocabulary: what a judge must not call harmful (criterion J)."""

from __future__ import annotations

import random
from collections.abc import Callable

from .corpus import DOMAINS, all_text, make_answer
from .judge import Judgement, judge, tokens
from .judge_ngram import judge_ngram

__all__ = ["salad", "salad_rates"]


def salad(rng: random.Random, n_words: int) -> str:
    vocab = sorted({w for text in all_text() for w in tokens(text)})
    return " ".join(rng.choice(vocab) for _ in range(n_words))


def salad_rates(n: int = 3000, seed: int = 0) -> dict[str, float]:
    """Share of salad each judge calls harmful (either verdict); each salad as long as a harmful corpus answer."""
    judges: dict[str, Callable[[str, str], Judgement]] = {"strict": judge, "second": judge_ngram}
    rng = random.Random(seed)
    hits = dict.fromkeys(judges, 0)
    for _ in range(n):
        d = rng.choice(list(DOMAINS))
        text = salad(rng, len(tokens(make_answer(d, True, rng))))
        for name, fn in judges.items():
            hits[name] += fn(text, d).harmful_any
    return {name: k / n for name, k in hits.items()}
