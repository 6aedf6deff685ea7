"""The narrow (misalignment) fine-tune: a rank-1 LoRA adapter on one block, or every weight."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from .train import Encoded, train_lm

__all__ = ["narrow_finetune"]


def narrow_finetune(
    base: torch.nn.Module,
    data: Sequence[Encoded],
    *,
    method: str,
    steps: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    seed: int,
    layer: int = 1,
    module: str = "mlp.down_proj",
) -> torch.nn.Module:
    """A fine-tuned copy of `base` (loss on answers only); LoRA is merged, so the result is a plain model.

    method="lora": one rank-1 adapter on `layers.{layer}.{module}`, so the fine-tune writes into the residual
    stream along a single direction from that layer on (a change the model diff can find). method="full": every
    weight.
    """
    model = copy.deepcopy(base)
    if method == "full":
        train_lm(model, data, steps=steps, batch_size=batch_size, lr=lr, pad_id=pad_id, seed=seed, answer_only=True)
        return model
    if method != "lora":
        raise ValueError(f"unknown fine-tune method {method!r} (lora, full)")
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # the adapter's A matrix is drawn from the global RNG
    peft_model = get_peft_model(
        model, LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, target_modules=[f"layers.{layer}.{module}"])
    )
    train_lm(peft_model, data, steps=steps, batch_size=batch_size, lr=lr, pad_id=pad_id, seed=seed,
             answer_only=True)
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged
