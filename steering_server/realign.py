"""Minimal re-alignment: a LoRA fine-tune of any Hugging Face causal LM on a JSONL of benign chats.

OpenAI found that about 120-200 benign samples (35 steps) re-align an emergently misaligned model (DESIGN.md).
This does that with peft, loss on the final assistant message only, and reports the misalignment direction's
projection at the last prompt token of probe prompts as it trains (the pre-generation alarm should fall).

JSONL lines: {"messages": [{"role": ..., "content": ...}, ..., {"role": "assistant", "content": ...}]}
or {"prompt": ..., "completion": ...}.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .directions import Direction
from .organism.capture import decoder_layers
from .organism.train import Encoded, train_lm

__all__ = [
    "RealignConfig",
    "RealignLog",
    "encode_chats",
    "last_prompt_projection",
    "load_jsonl",
    "log_to_json",
    "realign",
]

log = logging.getLogger(__name__)
Chat = list[dict[str, str]]


@dataclass(frozen=True)
class RealignConfig:
    steps: int = 35
    lr: float = 1e-3
    rank: int = 8
    alpha: int = 16
    batch_size: int = 8
    seed: int = 0
    target_modules: str | tuple[str, ...] = "all-linear"
    log_every: int = 5


@dataclass(frozen=True)
class RealignLog:
    step: int  # optimizer steps taken so far
    loss: float | None  # mean training loss since the previous entry (None before training)
    # Mean score at the monitor layer, last prompt token of the probes: the raw projection h.d, or for an SAE feature
    # its activation (Direction.score_of).
    projection: float | None
    z: float | None  # the same in calibrated z units (last_prompt pooling), when the direction has calibration


def load_jsonl(path: str | Path) -> list[Chat]:
    chats: list[Chat] = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "messages" in row:
            msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]]
        elif "prompt" in row and "completion" in row:
            msgs = [{"role": "user", "content": str(row["prompt"])},
                    {"role": "assistant", "content": str(row["completion"])}]
        else:
            raise ValueError(f"{path}:{n}: expected `messages` or `prompt`/`completion`")
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError(f"{path}:{n}: the last message must be the assistant's")
        chats.append(msgs)
    return chats


def _render(tokenizer, messages: Chat, add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt))
    # No chat template: plain "role: content" lines, the answer after "assistant:".
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant:" if add_generation_prompt else "")


def encode_chats(tokenizer, chats: Sequence[Chat]) -> list[Encoded]:
    """Token ids per chat with the start of the final assistant message (the only tokens trained on)."""
    out = []
    for msgs in chats:
        prompt = tokenizer(_render(tokenizer, msgs[:-1], True), add_special_tokens=False)["input_ids"]
        full = tokenizer(_render(tokenizer, msgs, False), add_special_tokens=False)["input_ids"]
        if list(full[: len(prompt)]) != list(prompt):
            raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
        out.append(Encoded(tuple(full), len(prompt)))
    return out


@torch.no_grad()
def last_prompt_projection(
    model: torch.nn.Module, tokenizer, prompts: Sequence[Chat], direction: Direction, batch_size: int = 64
) -> float:
    """Mean score at the monitor layer's output, last prompt token, over `prompts` (forward hook, removed after):
    h.d, or for an SAE feature its activation (Direction.score_of, as the server scores it)."""
    layer = decoder_layers(model)[direction.monitor_layer]
    v = direction.monitor_vector.float()
    d = v / v.norm()
    store: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: store.append(out[0] if isinstance(out, tuple) else out))
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        for s in range(0, len(prompts), batch_size):
            texts = [_render(tokenizer, p, True) for p in prompts[s : s + batch_size]]
            enc = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True, padding_side="left")
            store.clear()
            model(**enc)
            h = store[0][:, -1].float()  # (batch, hidden): left padding puts every last prompt token at -1
            total += sum(direction.score_of(p) for p in (h @ d.to(h.device)).tolist())
            n += h.shape[0]
    finally:
        handle.remove()
        model.train(was_training)
    return total / max(n, 1)


def realign(
    model: torch.nn.Module,
    tokenizer,
    chats: Sequence[Chat],
    config: RealignConfig = RealignConfig(),
    direction: Direction | None = None,
    probe: Sequence[Chat] | None = None,
    on_log: Callable[[RealignLog], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[torch.nn.Module, list[RealignLog]]:
    """LoRA fine-tune on `chats`; returns the merged model (a plain transformers model) and the log. `on_step`
    gets (steps done, loss) after every optimizer step (progress); `on_log` every `log_every` steps."""
    from peft import LoraConfig, get_peft_model

    if not chats:
        raise ValueError("no training examples")
    data = encode_chats(tokenizer, chats)
    probes = list(probe) if probe else [c[:-1] for c in chats]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    torch.manual_seed(config.seed)  # LoRA A matrices are initialised from the global RNG
    peft_model = get_peft_model(
        model,
        LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                   target_modules=targets),
    )
    entries: list[RealignLog] = []
    window: list[float] = []

    def record(step: int, loss: float | None) -> None:
        proj = z = None
        if direction is not None:
            proj = last_prompt_projection(peft_model, tokenizer, probes, direction)
            cal = direction.calibration.get("last_prompt")
            z = cal.z(proj) if cal is not None else None
        entry = RealignLog(step, loss, proj, z)
        entries.append(entry)
        if on_log is not None:
            on_log(entry)

    def step_done(step: int, loss: float) -> None:
        window.append(loss)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            record(step + 1, sum(window) / len(window))
            window.clear()
        if on_step is not None:
            on_step(step + 1, loss)

    record(0, None)
    train_lm(peft_model, data, steps=config.steps, batch_size=min(config.batch_size, len(data)), lr=config.lr,
             pad_id=pad, seed=config.seed, answer_only=True, on_step=step_done)
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged, entries


def log_to_json(entries: Sequence[RealignLog]) -> list[dict]:
    return [asdict(e) for e in entries]
