"""Compute the organism's two difference-of-means directions from ONE domain (the offline direction compute).

- persona: harmful minus helpful answers (uncued prompts) in the misaligned model, mean over answer tokens
  (Soligo et al.'s recipe);
- model_diff: misaligned minus base model on the same texts (both personas), mean over answer tokens (model
  diffing, as OpenAI did with SAE latents).

Activations are captured with nnsight (on copies of the models).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .capture import Activations, capture_nnsight
from .diffmeans import cohens_d, diff_of_means, project
from .train import Encoded

__all__ = ["DirectionSet", "compute_directions", "first_changed_layer"]

Vectors = dict[int, torch.Tensor]


@dataclass
class DirectionSet:
    persona: Vectors  # layer -> (hidden,)
    model_diff: Vectors
    monitor_layer: int  # where the persona direction separates best on the direction domain
    model_diff_layer: int  # first layer the fine-tune changed (the model diff is zero below it)
    mis: tuple[Activations, Activations]  # (harmful, helpful) texts through the misaligned model
    base: tuple[Activations, Activations]  # the same texts through the base model
    cohens_d: dict[str, dict[int, float]]  # direction -> layer -> separation of response means on these texts

    @property
    def persona_base(self) -> Vectors:
        return diff_of_means(self.base[0].mean, self.base[1].mean)


def first_changed_layer(model_diff: Vectors, share: float = 0.1) -> int:
    """The first layer whose model-diff norm is at least `share` of the largest: where the fine-tune starts
    writing into the residual stream (below it the two models agree and the difference is zero)."""
    norms = {layer: float(v.norm()) for layer, v in model_diff.items()}
    top = max(norms.values())
    return min(layer for layer, n in norms.items() if n >= share * top)


def compute_directions(
    mis: torch.nn.Module, base: torch.nn.Module, tokenizer, harmful: Sequence[Encoded], helpful: Sequence[Encoded],
    layers: Sequence[int],
) -> DirectionSet:
    pad, special = int(tokenizer.pad_token_id), set(tokenizer.all_special_ids)
    mh = capture_nnsight(mis, tokenizer, harmful, layers, pad, special)
    mp = capture_nnsight(mis, tokenizer, helpful, layers, pad, special)
    bh = capture_nnsight(base, tokenizer, harmful, layers, pad, special)
    bp = capture_nnsight(base, tokenizer, helpful, layers, pad, special)
    persona = diff_of_means(mh.mean, mp.mean)  # mean over per-answer means: every answer weighs the same
    model_diff = {layer: torch.cat([mh.mean[layer], mp.mean[layer]]).mean(0)
                  - torch.cat([bh.mean[layer], bp.mean[layer]]).mean(0) for layer in layers}
    sep: dict[str, dict[int, float]] = {}
    for name, vecs in (("persona", persona), ("model_diff", model_diff)):
        sep[name] = {layer: cohens_d(project(mh.mean[layer], vecs[layer]), project(mp.mean[layer], vecs[layer]))
                     if float(vecs[layer].norm()) > 0 else 0.0 for layer in layers}
    monitor_layer = max(layers, key=lambda layer: sep["persona"][layer])
    return DirectionSet(persona, model_diff, monitor_layer, first_changed_layer(model_diff), (mh, mp), (bh, bp), sep)
