"""Sampler cost per step: the engine's sampler (steering_server.sampling) against `argmax`, per kind of row.

Target (issue 9): greedy rows at most 2x `argmax` at 32 rows x 32k vocabulary. Interleaved rounds; prints the
median ms per step with the spread (min-max) and the ratio to `argmax` measured in the same rounds. Usage:
    OMP_NUM_THREADS=1 python benchmarks/sampler.py [--rows 32 --vocab 32000 --rounds 7 --reps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from steering_server.sampling import RowPlan, noise_key, sample_rows
from tests.sampling_reference import reference_sample_rows


def _case(
    rows: int, vocab: int, temperature: float, top_k: int, top_p: float, old: bool = False
) -> Callable[[], torch.Tensor]:
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 3
    t = torch.full((rows,), temperature)
    k = torch.full((rows,), top_k, dtype=torch.int64)
    p = torch.full((rows,), top_p)
    keys = torch.tensor([noise_key(1, i) for i in range(rows)], dtype=torch.int64)
    plan = RowPlan.from_params(t.tolist(), k.tolist(), p.tolist())  # the engine builds it on the host, once
    order = torch.tensor(plan.order, dtype=torch.int64)
    if old:
        return lambda: reference_sample_rows(logits, t, k, p, keys)
    return lambda: sample_rows(logits, t, k, p, keys, plan, order)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    logits = torch.randn(a.rows, a.vocab, generator=torch.Generator().manual_seed(0)) * 3
    cases: dict[str, Callable[[], torch.Tensor]] = {
        "argmax": lambda: logits.argmax(dim=-1),
        "greedy": _case(a.rows, a.vocab, 0.0, 0, 1.0),
        "sampled, top-k 50": _case(a.rows, a.vocab, 1.0, 50, 1.0),
        "sampled, top-p 0.9": _case(a.rows, a.vocab, 1.0, 0, 0.9),
        "sampled, top-k 50 + top-p 0.9": _case(a.rows, a.vocab, 1.0, 50, 0.9),
        "sampled, no filter": _case(a.rows, a.vocab, 1.0, 0, 1.0),
        "before: greedy (full sort)": _case(a.rows, a.vocab, 0.0, 0, 1.0, old=True),
        "before: top-p 0.9 (full sort)": _case(a.rows, a.vocab, 1.0, 0, 0.9, old=True),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(a.rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(a.reps):
                fn()
            times[name].append((time.perf_counter() - t0) / a.reps * 1e3)
    base = statistics.median(times["argmax"])
    print(f"sampler, {a.rows} rows x {a.vocab} vocab, {torch.get_num_threads()} thread(s), {a.rounds} rounds")
    print(f"{'rows':32s} {'ms/step':>9s} {'spread':>15s} {'vs argmax':>9s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:32s} {m:9.3f} {min(ts):7.3f}-{max(ts):<7.3f} {m / base:9.2f}x")


if __name__ == "__main__":
    main()
