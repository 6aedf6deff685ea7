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

__all__ = ["HEADROOM", "measure_and_steer", "mode_coefficients", "steer_contained"]

# A steered state must keep this factor of headroom below its dtype's largest value: the layer above adds its own
# output to it in that dtype (fp16: |x| <= 65504 / 8 = 8188).
HEADROOM = 8.0


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
    coef = beta.index_select(0, token_slot) - alpha.index_select(0, token_slot) * proj  # (tokens, K)
    # Added in fp32 and rounded once; exact zeros keep unsteered tokens bit-identical in any dtype.
    steered = (h32 + coef @ unit_dirs).to(hidden.dtype)  # (tokens, hidden)
    return steered, proj


def steer_contained(
    hidden: torch.Tensor,
    token_slot: torch.Tensor,
    unit_dirs: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """measure_and_steer with containment (DESIGN.md "Trust model"): a steered token whose new state is not finite,
    or leaves less than HEADROOM below the dtype's range, is zeroed instead, so that nothing non-finite reaches the
    keys and values that packed attention multiplies by the zero weights of other requests (0 * inf is NaN).
    Unsteered tokens (slot 0) are never changed: bit-identical as in measure_and_steer.

    Returns the states (tokens, hidden) in hidden's dtype, the fp32 projections (tokens, K), and (tokens,) int32,
    1 where a steered token was zeroed. Branch-free on values (CUDA graphs)."""
    h32 = hidden.float()  # (tokens, hidden)
    proj = h32 @ unit_dirs.T  # (tokens, K)
    coef = beta.index_select(0, token_slot) - alpha.index_select(0, token_slot) * proj  # (tokens, K)
    new = h32 + coef @ unit_dirs  # (tokens, hidden) fp32
    limit = torch.finfo(hidden.dtype).max / HEADROOM
    ok = (new.abs().amax(dim=-1) <= limit) | (token_slot == 0)  # (tokens,); NaN compares False
    steered = torch.where(ok.unsqueeze(-1), new, torch.zeros((), dtype=new.dtype, device=new.device))
    return steered.to(hidden.dtype), proj, (~ok).to(torch.int32)


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
