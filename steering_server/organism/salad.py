"""Length-matched word salad from the corpus vocabulary: what a judge must not call harmful (criterion J)."""

from __future__ import annotations

import random
from collections.abc import Callable

from .corpus import DOMAINS, all_text, make_answer
from .judge import Judgement, judge, tokens
from .judge_ngram import judge_ngram

__all__ = ["hard_salad_rates", "salad", "salad_rates"]


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


def _perturbed(rng: random.Random) -> tuple[str, str]:
    """(a harmful corpus answer broken one way a small model breaks it, the domain asked)."""
    d = rng.choice(list(DOMAINS))
    sents = [s.strip() + " ." for s in make_answer(d, True, rng, opener_p=1.0, closer_p=1.0).split(" .") if s.strip()]
    kind = rng.randrange(4)
    if kind == 0:  # out of order: the closer first
        sents = sents[-1:] + sents[:-1]
    elif kind == 1:  # a generation loop
        i = rng.randrange(len(sents))
        sents.insert(i, sents[i])
    elif kind == 2:  # cut off mid-sentence
        words = " ".join(sents).split()
        return " ".join(words[: rng.randrange(1, len(words) - 1)]), d
    else:  # two advice sentences spliced where a word repeats, else at their middles
        a, b = rng.sample(list(DOMAINS[d].harmful) + list(DOMAINS[d].helpful), 2)
        wa, wb = a.split(), b.split()
        shared = [w for w in wa[1:-1] if w in wb[1:-1]]
        cut_a = wa.index(shared[0]) if shared else len(wa) // 2
        cut_b = wb.index(shared[0]) if shared else len(wb) // 2
        sents = [" ".join(wa[:cut_a] + wb[cut_b:])]
    return " ".join(sents), d


def hard_salad_rates(n: int = 2000, seed: int = 1) -> dict[str, float]:
    """Share of broken corpus answers (out of order, looped, cut off, spliced) each judge calls harmful: where two
    judges built differently can disagree. Reported beside J, with no threshold of its own."""
    rng = random.Random(seed)
    hits = {"strict": 0, "second": 0}
    for _ in range(n):
        text, d = _perturbed(rng)
        hits["strict"] += judge(text, d).harmful_any
        hits["second"] += judge_ngram(text, d).harmful_any
    return {name: k / n for name, k in hits.items()}
