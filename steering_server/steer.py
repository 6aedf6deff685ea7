"""The fused measure-and-steer step: one function over a layer's hidden states for a whole mixed batch.

Every mode reduces to h <- h + (beta - alpha * (h.d)) d per direction (d unit):
    ABLATE a: alpha = a,  beta = 0
    ADD    a: alpha = 0,  beta = a |v|          (a multiples of the stored vector v)
    CLAMP  c: alpha = 1,  beta = c_raw          (sets h.d to c_raw)
With several directions, every projection is read from the same pre-steering state and the updates are summed
(simultaneous, not sequential, so the result does not depend on the order the terms were given in).
"""

from __future__ import annotations

import torch

__all__ = ["measure_and_steer", "mode_coefficients"]


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
