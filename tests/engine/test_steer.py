"""measure_and_steer against DESIGN.md's formulas, computed independently in float64.

ABLATE a: h <- h - a (h.d) d;  ADD a: h <- h + a v;  CLAMP c: h <- h - ((h.d) - c) d  (d = v / |v|).
Several directions read their projections from the same pre-steering state and the updates are summed.
"""

from __future__ import annotations

import pytest
import torch

from steering_server.steer import measure_and_steer, mode_coefficients

HIDDEN = 32


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _vectors(k: int, seed: int = 1) -> torch.Tensor:
    """(k, hidden) raw stored vectors with different norms, deliberately not orthogonal to each other."""
    g = _gen(seed)
    base = torch.randn(HIDDEN, generator=g)
    v = torch.randn(k, HIDDEN, generator=g) + 0.8 * base  # shared component: pairwise cosines well away from 0
    return v * torch.linspace(0.5, 3.0, k)[:, None]


def _hidden(tokens: int, seed: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(tokens, HIDDEN, generator=_gen(seed)) * 4).to(dtype)


def _tables(terms_per_slot: list[list[tuple[str, float, float]]], v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """terms_per_slot[s] = [(mode, strength, clamp_target_raw) per direction k] -> unit_dirs, alpha, beta."""
    unit = v / v.norm(dim=-1, keepdim=True)
    slots, k = len(terms_per_slot), v.shape[0]
    alpha, beta = torch.zeros(slots, k), torch.zeros(slots, k)
    for s, terms in enumerate(terms_per_slot):
        for j, (mode, strength, target) in enumerate(terms):
            alpha[s, j], beta[s, j] = mode_coefficients(mode, strength, float(v[j].norm()), target)
    return unit.float(), alpha, beta


def _reference(h: torch.Tensor, v: torch.Tensor, terms: list[tuple[str, float, float]]) -> torch.Tensor:
    """DESIGN.md's update per mode in float64, every projection taken from the same unsteered h, summed."""
    h64, v64 = h.double(), v.double()
    out = h64.clone()
    for j, (mode, a, c) in enumerate(terms):
        d = v64[j] / v64[j].norm()
        p = h64 @ d  # (tokens,)
        if mode == "ABLATE":
            out -= a * p[:, None] * d
        elif mode == "ADD":
            out += a * v64[j]
        elif mode == "CLAMP":
            out -= (p - c)[:, None] * d
    return out


def _unsteered() -> tuple[str, float, float]:
    return ("ADD", 0.0, 0.0)


@pytest.mark.parametrize(
    ("mode", "strength", "target"),
    [
        ("ABLATE", 1.0, 0.0),
        ("ABLATE", 0.5, 0.0),
        ("ABLATE", -2.0, 0.0),
        ("ADD", 1.5, 0.0),
        ("ADD", -0.75, 0.0),
        ("CLAMP", 0.0, 0.0),
        ("CLAMP", 0.0, 3.25),
        ("CLAMP", 0.0, -7.0),
    ],
)
def test_single_direction_matches_the_design_formula(mode: str, strength: float, target: float) -> None:
    v = _vectors(1)
    h = _hidden(6)
    unit, alpha, beta = _tables([[_unsteered()], [(mode, strength, target)]], v)
    steered, _ = measure_and_steer(h, torch.ones(6, dtype=torch.int64), unit, alpha, beta)
    want = _reference(h, v, [(mode, strength, target)])
    torch.testing.assert_close(steered.double(), want, rtol=0, atol=2e-5)
    assert steered.dtype == torch.float32


def test_ablate_one_removes_the_direction_and_keeps_the_orthogonal_part() -> None:
    v = _vectors(1)
    h = _hidden(5)
    unit, alpha, beta = _tables([[_unsteered()], [("ABLATE", 1.0, 0.0)]], v)
    steered, _ = measure_and_steer(h, torch.ones(5, dtype=torch.int64), unit, alpha, beta)
    d = unit[0]
    assert (steered @ d).abs().max() < 1e-5
    orth = h - (h @ d)[:, None] * d
    torch.testing.assert_close(steered, orth, rtol=0, atol=1e-5)


def test_add_moves_by_strength_times_the_stored_vector_not_the_unit_vector() -> None:
    v = _vectors(1) * 7.0  # |v| far from 1: a unit-vector ADD would be visibly wrong
    h = _hidden(3)
    unit, alpha, beta = _tables([[_unsteered()], [("ADD", 2.0, 0.0)]], v)
    steered, _ = measure_and_steer(h, torch.ones(3, dtype=torch.int64), unit, alpha, beta)
    torch.testing.assert_close(steered - h, (2.0 * v[0]).expand(3, -1), rtol=0, atol=1e-4)


def test_clamp_sets_the_projection_to_the_target() -> None:
    v = _vectors(1)
    h = _hidden(4)
    unit, alpha, beta = _tables([[_unsteered()], [("CLAMP", 0.0, 2.5)]], v)
    steered, proj = measure_and_steer(h, torch.ones(4, dtype=torch.int64), unit, alpha, beta)
    torch.testing.assert_close(steered @ unit[0], torch.full((4,), 2.5), rtol=0, atol=1e-5)
    # The returned projection is the one read before steering, not the clamped value.
    torch.testing.assert_close(proj[:, 0], h @ unit[0], rtol=0, atol=1e-5)
    assert (proj[:, 0] - 2.5).abs().min() > 0.1


def test_several_directions_read_the_same_pre_steering_state_and_sum() -> None:
    v = _vectors(3)
    h = _hidden(8)
    terms = [("ABLATE", 1.0, 0.0), ("ADD", 0.7, 0.0), ("CLAMP", 0.0, -1.5)]
    unit, alpha, beta = _tables([[_unsteered()] * 3, terms], v)
    steered, proj = measure_and_steer(h, torch.ones(8, dtype=torch.int64), unit, alpha, beta)
    want = _reference(h, v, terms)
    torch.testing.assert_close(steered.double(), want, rtol=0, atol=5e-5)

    # Sequential application (each term seeing the previous term's output) gives a different answer here,
    # because the directions are not orthogonal: the test above really checks the simultaneous rule.
    seq = h.double()
    for j, term in enumerate(terms):
        seq = _reference(seq.float(), v[j : j + 1], [term])
    assert (seq - want).abs().max() > 1e-2

    # Projections of every direction are those of the unsteered state.
    torch.testing.assert_close(proj, h @ unit.T, rtol=0, atol=1e-5)


def test_the_order_of_directions_does_not_matter() -> None:
    v = _vectors(3)
    h = _hidden(5)
    terms = [("ABLATE", 1.0, 0.0), ("ADD", -1.2, 0.0), ("CLAMP", 0.0, 0.5)]
    unit, alpha, beta = _tables([[_unsteered()] * 3, terms], v)
    perm = torch.tensor([2, 0, 1])
    slots = torch.ones(5, dtype=torch.int64)
    a, pa = measure_and_steer(h, slots, unit, alpha, beta)
    b, pb = measure_and_steer(h, slots, unit[perm], alpha[:, perm], beta[:, perm])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(pa[:, perm], pb, rtol=0, atol=1e-6)


def test_each_token_uses_its_own_slot_and_slot_zero_is_bit_identical() -> None:
    v = _vectors(2)
    h = _hidden(9)
    per_slot = [
        [_unsteered(), _unsteered()],
        [("ABLATE", 1.0, 0.0), _unsteered()],
        [_unsteered(), ("ADD", 1.0, 0.0)],
    ]
    unit, alpha, beta = _tables(per_slot, v)
    slots = torch.tensor([0, 1, 2, 0, 2, 1, 0, 0, 1])
    steered, proj = measure_and_steer(h, slots, unit, alpha, beta)
    for t, s in enumerate(slots.tolist()):
        if s == 0:
            # Bit-identical, not just close: unsteered requests in a steered batch must not drift.
            assert torch.equal(steered[t].view(torch.int32), h[t].view(torch.int32))
        else:
            want = _reference(h[t : t + 1], v, per_slot[s])
            torch.testing.assert_close(steered[t : t + 1].double(), want, rtol=0, atol=2e-5)
            assert (steered[t] - h[t]).abs().max() > 1e-2
    # Every token is measured, steered or not.
    torch.testing.assert_close(proj, h @ unit.T, rtol=0, atol=1e-5)


def test_unused_direction_rows_are_inert() -> None:
    v = _vectors(1)
    h = _hidden(4)
    unit, alpha, beta = _tables([[_unsteered()], [("ABLATE", 1.0, 0.0)]], v)
    # Table with room for 4 directions, only the first filled (the preallocated device table).
    unit4 = torch.zeros(4, HIDDEN)
    unit4[0] = unit[0]
    alpha4, beta4 = torch.zeros(2, 4), torch.zeros(2, 4)
    alpha4[:, 0], beta4[:, 0] = alpha[:, 0], beta[:, 0]
    alpha4[1, 1:], beta4[1, 1:] = 1.0, 5.0  # garbage coefficients in unused rows must not matter
    slots = torch.tensor([1, 1, 0, 1])
    a, _ = measure_and_steer(h, slots, unit, alpha, beta)
    b, pb = measure_and_steer(h, slots, unit4, alpha4, beta4)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert torch.equal(pb[:, 1:], torch.zeros(4, 3))


def test_bfloat16_hidden_states() -> None:
    v = _vectors(2)
    h = _hidden(7, dtype=torch.bfloat16)
    terms = [("ABLATE", 1.0, 0.0), ("ADD", 0.5, 0.0)]
    unit, alpha, beta = _tables([[_unsteered()] * 2, terms], v)
    slots = torch.tensor([0, 1, 1, 0, 1, 0, 1])
    steered, proj = measure_and_steer(h, slots, unit, alpha, beta)
    assert steered.dtype == torch.bfloat16
    assert proj.dtype == torch.float32
    # Projections are computed in fp32 from the bf16 values.
    torch.testing.assert_close(proj, h.float() @ unit.T, rtol=0, atol=1e-4)
    unsteered = slots == 0
    assert torch.equal(steered[unsteered].view(torch.int16), h[unsteered].view(torch.int16))
    want = _reference(h[~unsteered].float(), v, terms)
    # bf16 keeps 8 bits of mantissa: allow a few bf16 ulps of the magnitude (|h| ~ 4-15).
    torch.testing.assert_close(steered[~unsteered].double(), want, rtol=0, atol=0.15)
    assert (steered[~unsteered].float() - h[~unsteered].float()).abs().max() > 0.5


def test_mode_coefficients() -> None:
    assert mode_coefficients("ABLATE", 0.75, 3.0) == (0.75, 0.0)
    assert mode_coefficients("ADD", -2.0, 3.0) == (0.0, -6.0)
    assert mode_coefficients("CLAMP", 123.0, 3.0, clamp_target_raw=1.5) == (1.0, 1.5)
    with pytest.raises(ValueError, match="unknown steering mode"):
        mode_coefficients("SCALE", 1.0, 1.0)
