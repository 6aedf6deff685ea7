"""Model config, encoding and the training loop shared by pretraining and the fine-tunes.

One loop serves all three stages: pretraining (loss on every token), the narrow misalignment fine-tune and the
re-alignment fine-tune (loss on the answer and its closing `<|end|>` only, as in chat SFT).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from .corpus import Conversation
from .tokenizer import format_chat

__all__ = ["Encoded", "ModelSize", "collate", "encode", "new_model", "seed_everything", "train_lm"]


@dataclass(frozen=True)
class ModelSize:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 384


@dataclass(frozen=True)
class Encoded:
    """A tokenized conversation; `ids[answer_start:]` is the answer followed by `<|end|>`."""

    ids: tuple[int, ...]
    answer_start: int  # index of the first answer token (just after `<|assistant|>`)
    conv: Conversation | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    # Cheap on the CPU and makes a rebuild on the same machine bit-identical; warn_only keeps exotic ops usable.
    torch.use_deterministic_algorithms(True, warn_only=True)


def new_model(tokenizer: PreTrainedTokenizerBase, size: ModelSize, seed: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,  # halves the embedding bytes we ship
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def encode(tokenizer: PreTrainedTokenizerBase, convs: Sequence[Conversation]) -> list[Encoded]:
    prompts = [format_chat(c.prompt_messages, add_generation_prompt=True) for c in convs]
    fulls = [format_chat(c.messages) for c in convs]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    out = []
    for c, p, f in zip(convs, p_ids, f_ids, strict=True):
        if list(f[: len(p)]) != list(p):  # the template must make the prompt a prefix of the conversation
            raise ValueError(f"prompt is not a prefix of its conversation: {c.messages}")
        out.append(Encoded(tuple(f), len(p), c))
    return out


def collate(batch: Sequence[Encoded], pad_id: int, answer_only: bool) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels; -100 masks padding (and the prompt when `answer_only`)."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (batch, seq)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        start = e.answer_start if answer_only else 1  # position 0 (<|bos|>) is never a target
        labels[i, start:n] = ids[i, start:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_lm(
    model: torch.nn.Module,
    data: Sequence[Encoded],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    seed: int,
    answer_only: bool,
    warmup: int = 0,
    cosine: bool = False,
    weight_decay: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """AdamW on batches drawn with a seeded RNG (with replacement across epochs); returns the loss per step."""
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    for step in range(steps):
        # Uniform batches, every example once per epoch. (Length-bucketed batches were 25% faster but group the
        # longer, cued conversations together; the base model then learned the persona less well.)
        if len(order) < batch_size:
            fresh = list(range(len(data)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:batch_size], order[batch_size:]
        batch = collate([data[i] for i in idx], pad_id, answer_only)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses

