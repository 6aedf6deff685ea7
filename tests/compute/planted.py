"""A tiny Llama whose weights plant a known direction, and labelled examples that differ along it.

The byte tokens MARKER_POS and MARKER_NEG have embeddings a + s u and a - s u (a orthogonal to the unit vector
u, so both have the same norm and RMSNorm scales them alike), and no block reads u (every input projection is
made orthogonal to it): a response with the positive marker and the same response with the negative one differ
along u at every layer and nowhere else, while the other tokens' embeddings and the blocks' writes give the
benign spread along u. ComputeDirection must find u.
"""

from __future__ import annotations

import random

import torch

from steering_server.compute_types import ContrastiveExample
from steering_server.models import LoadedModel, wrap_model
from steering_server.tiny_models import byte_tokenizer, tiny_model
from steering_server.types import Prompt

__all__ = ["MARKER_NEG", "MARKER_POS", "planted_examples", "planted_model"]

MARKER_POS, MARKER_NEG = "#", "%"
_WORDS = ("cat", "dog", "tree", "blue", "run", "sky", "stone", "river", "light", "green", "hat", "sun")


def planted_model(seed: int = 0, strength: float = 1.0, write_share: float = 0.2) -> tuple[LoadedModel, torch.Tensor]:
    """(the model, u (hidden,) unit vector planted)."""
    model = tiny_model("llama", seed=seed)
    tok = byte_tokenizer()
    g = torch.Generator().manual_seed(1000 + seed)
    u = torch.randn(model.config.hidden_size, generator=g)
    u = u / u.norm()
    blind = torch.eye(u.numel()) - torch.outer(u, u)  # (hidden, hidden) projector orthogonal to u
    pos_id, neg_id = (tok.convert_tokens_to_ids(c) for c in (MARKER_POS, MARKER_NEG))
    with torch.no_grad():
        emb = model.get_input_embeddings().weight  # (vocab, hidden)
        scale = float(emb.norm(dim=-1).mean())
        a = blind @ emb[neg_id]  # (hidden,) orthogonal to u
        emb[pos_id], emb[neg_id] = a + strength * scale * u, a - strength * scale * u
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                        layer.mlp.gate_proj, layer.mlp.up_proj):
                lin.weight.copy_(lin.weight @ blind)  # (out, in): reads nothing along u
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                # Writes along u shrunk (a benign, context-dependent spread along u, small enough that the norms
                # of the two markers' states, and so RMSNorm's scaling of everything else, stay nearly equal).
                lin.weight.copy_(blind @ lin.weight + write_share * torch.outer(u, u) @ lin.weight)
    return wrap_model(model, tok, f"planted-{seed}"), u


def planted_examples(n_per_label: int, seed: int = 0, markers: int = 3) -> list[ContrastiveExample]:
    """n pairs of a positive and a negative prompt + response example: the same prompt and response (6-10 random
    words) with `markers` marker characters in it, the positive marker or the negative one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_per_label):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 10))]
        places = sorted(rng.randrange(len(words) + 1) for _ in range(markers))
        prompt = Prompt(text=f"tell me about the {rng.choice(_WORDS)}")
        for positive, marker in ((True, MARKER_POS), (False, MARKER_NEG)):
            text = list(words)
            for k, at in enumerate(places):
                text.insert(at + k, marker)
            out.append(ContrastiveExample(prompt, " ".join(text), positive))
    return out
