"""Per-request sampling (Engine rule 2): a row's token depends only on (seed, position, logits)."""

from __future__ import annotations

import torch

from steering_server.sampling import RowPlan, _mix32_int, noise_key, sample_rows, uniform_noise
from tests.sampling_reference import reference_sample_rows

VOCAB = 50


def _logits(rows: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 2


def _params(rows: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> tuple[torch.Tensor, ...]:
    return (torch.full((rows,), temperature), torch.full((rows,), top_k, dtype=torch.int64), torch.full((rows,), top_p))


def _keys(n: int, seed: int = 1234, start: int = 0) -> torch.Tensor:
    return torch.tensor([noise_key(seed, start + i) for i in range(n)], dtype=torch.int64)


def _sample_one_logit_row(row: torch.Tensor, keys: torch.Tensor, **kw: float) -> torch.Tensor:
    """The same logits under many keys (e.g. one request's positions): (keys,) sampled ids."""
    n = keys.shape[0]
    t, k, p = _params(n, **kw)  # type: ignore[arg-type]
    return sample_rows(row.expand(n, -1).contiguous(), t, k, p, keys)


def test_greedy_rows_take_the_argmax_whatever_the_other_settings() -> None:
    logits = _logits(16)
    t, _, _ = _params(16, temperature=0.0)
    top_k = torch.arange(16, dtype=torch.int64) % 4  # 0..3: top-k / top-p do not apply to greedy rows
    top_p = torch.linspace(0.05, 1.0, 16)
    out = sample_rows(logits, t, top_k, top_p, _keys(16))
    assert torch.equal(out, logits.argmax(dim=-1))


def test_a_row_depends_only_on_its_key_and_logits_not_on_the_batch() -> None:
    rows = 12
    logits = _logits(rows)
    keys = _keys(rows)
    t = torch.tensor([1.0, 0.0, 0.7, 1.3] * 3)
    top_k = torch.tensor([0, 0, 5, 0, 3, 0, 0, 10, 0, 0, 2, 0], dtype=torch.int64)
    top_p = torch.tensor([1.0, 1.0, 1.0, 0.9, 1.0, 0.5, 1.0, 1.0, 0.8, 1.0, 1.0, 0.95])
    together = sample_rows(logits, t, top_k, top_p, keys)
    # Each row alone gives the same token.
    for i in range(rows):
        alone = sample_rows(logits[i : i + 1], t[i : i + 1], top_k[i : i + 1], top_p[i : i + 1], keys[i : i + 1])
        assert alone.item() == together[i].item()
    # Reordering the batch reorders the tokens and changes nothing else.
    perm = torch.randperm(rows, generator=torch.Generator().manual_seed(3))
    shuffled = sample_rows(logits[perm], t[perm], top_k[perm], top_p[perm], keys[perm])
    assert torch.equal(shuffled, together[perm])
    # Other rows with different contents do not change row 0 either.
    other = _logits(rows, seed=99)
    other[0] = logits[0]
    mixed = sample_rows(other, t, top_k, top_p, keys)
    assert mixed[0].item() == together[0].item()


def test_same_key_same_token_and_keys_do_vary_the_token() -> None:
    row = torch.zeros(VOCAB)  # uniform distribution: only the noise picks the token
    keys = _keys(200)
    a = _sample_one_logit_row(row, keys)
    b = _sample_one_logit_row(row, keys.clone())
    assert torch.equal(a, b)
    assert len(set(a.tolist())) > 30  # 200 draws from 50 equally likely tokens


def test_noise_key_is_a_function_of_seed_and_position() -> None:
    assert noise_key(7, 3) == noise_key(7, 3)
    keys = {noise_key(s, p) for s in (0, 1, 2, -1, 2**40, 2**40 + 1, 2**63 - 1) for p in range(20)}
    assert len(keys) == 7 * 20  # distinct seeds (including ones differing only above bit 32) and positions
    assert all(0 <= k < 2**32 for k in keys)


def test_top_k_one_is_greedy() -> None:
    logits = _logits(64, seed=5)
    t, k, p = _params(64, temperature=1.0, top_k=1)
    assert torch.equal(sample_rows(logits, t, k, p, _keys(64)), logits.argmax(dim=-1))


def test_top_k_restricts_to_the_k_best() -> None:
    row = _logits(1, seed=6)[0] * 0.1  # nearly flat: without the cut, most tokens would show up
    best3 = set(row.topk(3).indices.tolist())
    seen = _sample_one_logit_row(row, _keys(300), top_k=3)
    assert set(seen.tolist()) == best3  # only the three best, and all three of them


def test_small_top_p_keeps_only_the_best_token() -> None:
    row = _logits(1, seed=7)[0] * 0.1
    seen = _sample_one_logit_row(row, _keys(200), top_p=1e-3)
    assert set(seen.tolist()) == {int(row.argmax())}


def test_top_p_keeps_the_smallest_prefix_reaching_p() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    seen = _sample_one_logit_row(probs.log(), _keys(400), top_p=0.7)
    # Mass before token 1 is 0.5 < 0.7 (kept); before token 2 it is 0.8 (cut).
    assert set(seen.tolist()) == {0, 1}


def test_top_p_applies_to_the_distribution_left_by_top_k() -> None:
    """Hugging Face order: top-k, then top-p on the renormalised remainder.

    Top-2 of these leaves (0.35, 0.25) -> (0.583, 0.417); top-p 0.55 then keeps only the best token. Computing
    top-p on the full distribution would keep both (mass before token 1 would be 0.35).
    """
    probs = torch.tensor([0.35, 0.25, 0.1, 0.1, 0.1, 0.1])
    seen = _sample_one_logit_row(probs.log(), _keys(300), top_k=2, top_p=0.55)
    assert set(seen.tolist()) == {0}


def _frequencies(logits: torch.Tensor, n: int, temperature: float) -> torch.Tensor:
    seen = _sample_one_logit_row(logits, _keys(n, seed=2024), temperature=temperature)
    return torch.bincount(seen, minlength=logits.shape[0]).double() / n


def test_frequencies_follow_the_softmax() -> None:
    """Deterministic (fixed keys); the bound is ~6 standard deviations of a frequency over 20000 draws."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0, 1.5])
    n = 20000
    for temperature in (1.0, 2.0, 0.5):
        want = (logits.double() / temperature).softmax(-1)
        got = _frequencies(logits, n, temperature)
        assert (got - want).abs().max() < 0.02, (temperature, got, want)


def test_uniform_noise_is_in_the_open_unit_interval_and_reproducible() -> None:
    keys = _keys(64)
    u = uniform_noise(keys, 1000)
    assert u.shape == (64, 1000) and u.dtype == torch.float32
    assert u.min() > 0 and u.max() < 1
    assert torch.equal(u, uniform_noise(keys.clone(), 1000))
    # A row's noise does not depend on the other rows.
    assert torch.equal(uniform_noise(keys[5:6], 1000), u[5:6])
    assert abs(float(u.double().mean()) - 0.5) < 0.01


def _inverse_mix32(x: int) -> int:
    """Inverse of sampling._mix32_int (lowbias32): undo each xorshift and multiplication in reverse order."""
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * pow(0x846CA68B, -1, 2**32)) & m
    x ^= (x >> 15) ^ (x >> 30)
    x = (x * pow(0x7FEB352D, -1, 2**32)) & m
    return x ^ (x >> 16)


def _key_with_max_hash_at_token_0() -> int:
    """A key whose hash for token id 0 is 2**32 - 1, the largest: its uniform would round to 1.0 in fp32."""
    key = _inverse_mix32(_inverse_mix32(0xFFFFFFFF) ^ 0x5BD1E995)
    assert _mix32_int(_mix32_int(key) ^ 0x5BD1E995) == 0xFFFFFFFF  # the helper is right
    return key


def test_uniform_noise_stays_below_one_for_the_largest_hashes() -> None:
    keys = torch.tensor([_key_with_max_hash_at_token_0()], dtype=torch.int64)
    u = uniform_noise(keys, 4)
    assert float(u[0, 0]) < 1.0
    assert torch.isfinite(-torch.log(-torch.log(u))).all()


def test_an_improbable_token_does_not_win_on_extreme_noise() -> None:
    """Token 0 has probability e^-17 (4e-8). The largest finite noise (u = 1 - 2^-24, Gumbel 16.6) cannot lift it
    over token 1, but a uniform rounded to exactly 1.0 gives infinite noise and token 0 would always win. (Two
    tokens and a gap of 17 keep token 0 inside top-p 1.0 in fp32; far smaller probabilities fall out of it.)"""
    keys = torch.tensor([_key_with_max_hash_at_token_0()], dtype=torch.int64)
    logits = torch.tensor([[-17.0, 0.0]])
    t, k, p = _params(1, temperature=1.0)
    assert sample_rows(logits, t, k, p, keys).item() == 1


def test_every_path_gives_the_tokens_of_a_full_sort() -> None:
    """Greedy, top-k, top-p (nucleus inside the candidates, and a flat row whose nucleus is not), plain sampling,
    mixed in one batch over a vocabulary larger than the nucleus candidates: the oracle's tokens, row for row."""
    vocab, rows = 3000, 40
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(rows, vocab, generator=g) * 3
    logits[1] *= 0.001  # nearly flat: its top-p 0.9 nucleus holds ~2700 tokens, beyond the first candidates
    t = torch.tensor([0.0, 1.0, 0.7, 1.3, 2.0] * 8)
    top_k = torch.tensor([0, 0, 5, 0, 50, 0, 0, 1, 0, 200] * 4, dtype=torch.int64)
    top_p = torch.tensor([1.0, 0.9, 1.0, 0.5, 0.95, 0.9, 1.0, 1.0, 0.3, 0.99] * 4)
    assert float(logits[1].softmax(-1).topk(2048).values.sum()) < 0.9  # row 1 sorts its row
    for start in range(0, 60, 20):
        keys = _keys(rows, seed=77, start=start)
        want = reference_sample_rows(logits, t, top_k, top_p, keys)
        assert torch.equal(sample_rows(logits, t, top_k, top_p, keys), want)


def test_plan_groups_rows_by_what_they_ask() -> None:
    plan = RowPlan.from_params([0.0, 1.0, 1.0, 0.5, 0.0], [3, 0, 7, 0, 0], [1.0, 0.9, 0.5, 1.0, 0.2])
    assert plan.order == (0, 4, 2, 1, 3)
    assert (plan.greedy_end, plan.top_k_end, plan.top_p_end, plan.max_k) == (2, 3, 4, 7)
    assert RowPlan.from_params([0.0, 0.0], [5, 0], [0.5, 1.0]).all_greedy
