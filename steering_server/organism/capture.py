"""Residual-stream capture: decoder-block outputs at answer tokens and at the last prompt token.

Layer l is the output of decoder block l. (In transformers 5.24 `hidden_states[l + 1]` equals it for every block
but the last, whose entry in `hidden_states` has the final norm applied; capturing block outputs avoids that.)

Two independent implementations: `capture` uses plain forward hooks (what the evaluation and the engine use),
`capture_nnsight` traces a copy of the model with nnsight (the offline direction compute, DESIGN.md); a test
checks that they agree.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .train import Encoded

__all__ = ["Activations", "batches", "capture", "capture_nnsight", "decoder_layers"]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder's ModuleList of length num_hidden_layers (works through PEFT and nnsight wrappers)."""
    n = int(getattr(model, "config").num_hidden_layers)  # noqa: B009 (nn.Module does not declare `config`)
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    raise ValueError(f"no decoder ModuleList of length {n} in {type(model).__name__}")


@dataclass
class Activations:
    """Captured activations of n examples at each requested layer (fp32, CPU).

    tokens[l]: (n_answer_tokens, hidden) over every example's answer tokens, in order; `token_example` maps each
    row to its example. mean[l]: (n, hidden) mean over each example's answer tokens. last_prompt[l]: (n, hidden)
    at the last prompt token (`<|assistant|>`, where the pre-generation alarm is read).
    """

    tokens: dict[int, torch.Tensor]
    token_example: torch.Tensor  # (n_answer_tokens,) long
    mean: dict[int, torch.Tensor]
    last_prompt: dict[int, torch.Tensor]


def _answer_positions(e: Encoded, special_ids: set[int]) -> list[int]:
    # Answer tokens only: after `<|assistant|>`, without special tokens (the closing `<|end|>`), as calibration asks.
    return [i for i in range(e.answer_start, len(e.ids)) if e.ids[i] not in special_ids]


def batches(examples: Sequence[Encoded], batch_size: int, pad_id: int):
    for s in range(0, len(examples), batch_size):
        chunk = examples[s : s + batch_size]
        width = max(len(e.ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # right padding: positions start at 0
        mask = torch.zeros_like(ids)
        for i, e in enumerate(chunk):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        yield chunk, ids, mask


@dataclass
class _Acc:
    tokens: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    mean: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    last: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    index: list[torch.Tensor] = field(default_factory=list)

    def add(self, chunk: Sequence[Encoded], hs: dict[int, torch.Tensor], special_ids: set[int], offset: int) -> None:
        for layer, h in hs.items():  # h: (batch, seq, hidden)
            h = h.float()
            for i, e in enumerate(chunk):
                pos = _answer_positions(e, special_ids)
                tok = h[i, pos] if pos else h.new_zeros((0, h.shape[-1]))  # (answer_tokens, hidden)
                self.tokens.setdefault(layer, []).append(tok)
                self.mean.setdefault(layer, []).append(tok.mean(0) if pos else h.new_zeros(h.shape[-1]))
                self.last.setdefault(layer, []).append(h[i, e.answer_start - 1])  # (hidden,)
        for i, e in enumerate(chunk):
            self.index.append(torch.full((len(_answer_positions(e, special_ids)),), offset + i, dtype=torch.long))

    def finish(self) -> Activations:
        return Activations(
            tokens={k: torch.cat(v) for k, v in self.tokens.items()},
            token_example=torch.cat(self.index) if self.index else torch.zeros(0, dtype=torch.long),
            mean={k: torch.stack(v) for k, v in self.mean.items()},
            last_prompt={k: torch.stack(v) for k, v in self.last.items()},
        )


@torch.no_grad()
def capture(
    model: torch.nn.Module, examples: Sequence[Encoded], layers: Sequence[int], pad_id: int, special_ids: set[int],
    batch_size: int = 64,
) -> Activations:
    """Block outputs through plain forward hooks (removed in `finally`)."""
    blocks = decoder_layers(model)
    store: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(_mod, _inp, out):
            store[layer] = (out[0] if isinstance(out, tuple) else out).detach()

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    acc = _Acc()
    try:
        offset = 0
        for chunk, ids, mask in batches(examples, batch_size, pad_id):
            model(input_ids=ids, attention_mask=mask)
            acc.add(chunk, dict(store), special_ids, offset)
            offset += len(chunk)
    finally:
        for h in handles:
            h.remove()
    return acc.finish()


@torch.no_grad()
def capture_nnsight(
    model: torch.nn.Module, tokenizer, examples: Sequence[Encoded], layers: Sequence[int], pad_id: int,
    special_ids: set[int], batch_size: int = 64,
) -> Activations:
    """Block outputs traced with nnsight on a *copy* of the model (wrapping replaces module forwards for good)."""
    import nnsight
    from nnsight import TransformersModel

    lm = TransformersModel(copy.deepcopy(model), tokenizer=tokenizer)
    acc = _Acc()
    offset = 0
    for chunk, ids, mask in batches(examples, batch_size, pad_id):
        with lm.trace({"input_ids": ids, "attention_mask": mask}):
            saved = nnsight.save([])  # assignments inside a trace do not escape it; a saved container does
            for layer in layers:
                saved.append(lm.model.layers[layer].output)
        acc.add(chunk, dict(zip(layers, saved, strict=True)), special_ids, offset)
        offset += len(chunk)
    return acc.finish()
