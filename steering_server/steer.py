"""The fused measure-and-steer step: one function over a layer's hidden states for a whole mixed batch.

Every mode reduces to h <- h + (beta - alpha * (h.d)) d per direction (d unit):
    ABLATE a: alpha = a,  beta = 0
    ADD    a: alpha = 0,  beta = a |v|          (a multiples of the stored vector v)
    CLAMP  c: alpha = 1,  beta = c_raw          (sets h.d to c_raw)
With several directions, every projection is read from the same pre-steering state and the updates are summed
(simultaneous, not sequential, so the result does not depend on the order the terms were given in).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "GATE_NEVER", "HEADROOM", "Gated", "latch_gates", "measure_and_steer", "mode_coefficients", "steer_contained",
]

# A steered state must keep this factor of headroom below its dtype's largest value: the layer above adds its own
# output to it in that dtype (fp16: |x| <= 65504 / 4 = 16376). Real fp16 models' largest activations ("massive
# activations" at the first position) are a few thousand.
HEADROOM = 4.0
# A gate's latched position before it fires (conditional steering, latch_gates): above every absolute position.
GATE_NEVER = 1 << 62


def measure_and_steer(
    hidden: torch.Tensor,
    token_slot: torch.Tensor,
    unit_dirs: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steer a batch of tokens, each with its own request's coefficients.

    hidden: (tokens, hidden) states at one layer, any float dtype.
    token_slot: (tokens,) int64 request slot of each token; slot 0 has all-zero coefficients (unsteered).
    unit_dirs: (K, hidden) fp32 unit directions of this layer; unused rows are zero.
    alpha, beta: (slots, K) fp32 coefficients of this layer.
    Returns the steered states (tokens, hidden) in hidden's dtype and the fp32 projections (tokens, K) read before
    steering. Unsteered tokens come back bit-identical: their update is an exact zero.
    """
    h32 = hidden.float()  # (tokens, hidden); no copy when already fp32
    proj = h32 @ unit_dirs.T  # (tokens, K)
    # beta - alpha * proj per token, fused: (tokens, K)
    coef = torch.addcmul(beta.index_select(0, token_slot), alpha.index_select(0, token_slot), proj, value=-1.0)
    # h + coef @ d, fused, in fp32 and rounded once; exact zeros keep unsteered tokens bit-identical in any dtype.
    steered = torch.addmm(h32, coef, unit_dirs).to(hidden.dtype)  # (tokens, hidden)
    return steered, proj


def latch_gates(
    proj: torch.Tensor,
    layer: int,
    token_pos: torch.Tensor,
    token_gate: torch.Tensor,
    gate_pos: torch.Tensor,
    gate_spec: torch.Tensor,
    gate_threshold: torch.Tensor,
) -> torch.Tensor:
    """Conditional steering decided on the device (CAST): latch each gate whose condition is read at this layer, and
    say which tokens each gate lets steer. Branch-free on values, in place at fixed addresses (CUDA graphs).

    proj: (tokens, K) fp32 projections at this layer, before steering.
    token_pos: (tokens,) int64 absolute position of each token.
    token_gate: (C, tokens) int64 gate of each token per condition column (gate 0: none; it never fires).
    gate_pos: (G,) int64 the first position at which each gate fired (GATE_NEVER before), updated here.
    gate_spec: (G, 4) int64 per gate: the condition's monitor layer (-1 for unused gates), its direction row, and
    the first and last positions whose reading counts (PROMPT: the last prompt token only; RUNNING: every fed-back
    generated position). gate_threshold: (G,) fp32 raw threshold.
    Returns (C, tokens) bool: the token is at or after its gate's firing position (then its conditional
    coefficients apply). A gate is a minimum over positions, so a request re-prefilled after a reset latches at the
    same position again and its earlier positions stay unsteered.
    """
    pos = token_pos.unsqueeze(0).expand_as(token_gate)  # (C, tokens)
    spec = gate_spec[token_gate]  # (C, tokens, 4): one gather for every parameter
    reading = proj.gather(1, spec[..., 1].T).T  # (C, tokens): each token's projection on its gate's row
    fires = (
        (spec[..., 0] == layer)
        & (pos >= spec[..., 2])
        & (pos <= spec[..., 3])
        & (reading >= gate_threshold[token_gate])  # NaN compares False
    )
    never = torch.full_like(pos, GATE_NEVER)
    gate_pos.scatter_reduce_(0, token_gate.flatten(), torch.where(fires, pos, never).flatten(), "amin")
    return pos >= gate_pos[token_gate]


class Gated(NamedTuple):
    """Conditional steering's extra terms for steer_contained."""

    cond_slots: torch.Tensor  # (C, tokens) int64: the slot holding each condition's coefficients for the token
    on: torch.Tensor  # (C, tokens) bool: the condition is on for the token (latch_gates)
    alpha: torch.Tensor  # (slots, K) fp32: the layer's coefficient tables, indexed by cond_slots
    beta: torch.Tensor  # (slots, K) fp32


def steer_contained(
    hidden: torch.Tensor,
    unit_dirs: torch.Tensor,
    alpha_rows: torch.Tensor,
    beta_rows: torch.Tensor,
    applied: torch.Tensor,
    gated: Gated | None = None,
    proj: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """measure_and_steer with containment (DESIGN.md "Trust model"). A steered token whose update could make its
    state non-finite, or leave less than HEADROOM below the dtype's largest value, is not steered at this layer: it
    keeps its state, so nothing non-finite reaches the keys and values that packed attention multiplies by the zero
    weights of other requests (0 * inf is NaN). The check bounds the new state without a full pass over it:
    |h + coef @ U|_inf <= |h|_inf + sum_k |coef_k| (unit rows have entries <= 1), and only the small coefficient
    tensor is masked. Unsteered tokens (slot 0) are bit-identical, as in measure_and_steer.

    `alpha_rows`, `beta_rows`: each token's coefficients, (tokens, K) (the slot tables gathered by token slot), or
    (K,) when every token of the batch has the same slot, as a lone request's do (broadcast: no gather, the same
    numbers).
    `applied`: a (tokens, 1) bool buffer, written in place: False where a token's update was refused (the caller
    reads it after the forward, once for every layer, rather than each layer adding up its own refusals).
    `gated` (conditional steering, `Gated`): per condition column the token's slot of extra coefficients and
    whether the condition is on for it (latch_gates); an extra term that is off adds an exact zero (masked, never
    multiplied, so a non-finite projection cannot leak through it). `proj`: the projections (tokens, K) when the
    caller already computed them from `hidden` (for latch_gates).

    Returns the states (tokens, hidden) in hidden's dtype and the fp32 projections (tokens, K). Branch-free on
    values (CUDA graphs)."""
    h32 = hidden.float()  # (tokens, hidden)
    if proj is None:
        proj = h32 @ unit_dirs.T  # (tokens, K)
    # beta - alpha * proj per token, fused as in measure_and_steer: (tokens, K). Each op here runs at every steered
    # layer of every step; on small CPU batches their count, not their size, is the cost (a decode step's ops take
    # 3-10 us each whatever their size).
    coef = torch.addcmul(beta_rows, alpha_rows, proj, value=-1.0)
    if gated is not None:  # every condition column at once: a few kernels whatever their number
        c, t = gated.cond_slots.shape
        flat = gated.cond_slots.flatten()  # (C * tokens,)
        extra = (gated.beta.index_select(0, flat).view(c, t, -1)
                 - gated.alpha.index_select(0, flat).view(c, t, -1) * proj)  # (C, tokens, K)
        coef = coef + torch.where(gated.on.unsqueeze(-1), extra, 0.0).sum(dim=0)  # (C, tokens, K) -> (tokens, K)
    # A bound on |h|_inf: fp16's range is small enough for real states to approach it, so its largest entry; for
    # bf16 and fp32 (range 3e38) only non-finite values matter, which |sum| catches in one cheaper pass.
    # (The dtype is fixed per model: this is not a branch on tensor values.)
    if hidden.dtype == torch.float16:
        h_reach = h32.abs().amax(dim=-1, keepdim=True)  # (tokens, 1)
    else:
        h_reach = h32.sum(dim=-1, keepdim=True).abs()
    # (tokens, 1): |h| bound + sum_k |coef_k| in one op; NaN and inf propagate
    reach = h_reach + torch.linalg.vector_norm(coef, 1, dim=-1, keepdim=True)
    # Unsteered tokens have zero coefficients: refusing their update changes nothing (their flags are ignored).
    ok = torch.le(reach, _limit(hidden.dtype), out=applied)  # NaN compares False
    coef = torch.where(ok, coef, 0.0)
    # h + coef @ d, fused, in fp32 and rounded once; exact zeros keep unsteered tokens bit-identical in any dtype.
    steered = torch.addmm(h32, coef, unit_dirs)  # (tokens, hidden) fp32
    return (steered if hidden.dtype == torch.float32 else steered.to(hidden.dtype)), proj


_LIMITS: dict[torch.dtype, float] = {}


def _limit(dtype: torch.dtype) -> float:
    """The largest |state| a steered token may reach in `dtype` (HEADROOM below its range); cached per dtype."""
    limit = _LIMITS.get(dtype)
    if limit is None:
        limit = _LIMITS[dtype] = torch.finfo(dtype).max / HEADROOM
    return limit


def mode_coefficients(
    mode: str, strength: float, vector_norm: float, clamp_target_raw: float = 0.0
) -> tuple[float, float]:
    """(alpha, beta) for one term at one layer; see the module docstring."""
    if mode == "ABLATE":
        return strength, 0.0
    if mode == "ADD":
        return 0.0, strength * vector_norm
    if mode == "CLAMP":
        return 1.0, clamp_target_raw
    raise ValueError(f"unknown steering mode {mode!r}")
