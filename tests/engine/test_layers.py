"""resolve_layers per supported architecture, and DESIGN.md's layer numbering: layer l = hidden_states[l + 1].

Hugging Face applies the final norm to the last entry of `hidden_states` in every supported architecture, so for
the last layer the hook output is compared after that norm (the hook, i.e. our layer n - 1, is the raw residual).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from steering_server.layers import SUPPORTED_ARCHITECTURES, resolve_layers
from steering_server.tiny_models import tiny_model

LAYERS = 4
IDS = torch.tensor([[1, 40, 41, 42, 200, 7, 99, 3], [1, 9, 8, 7, 6, 5, 4, 3]])


def _final_norm(model: nn.Module, arch: str) -> nn.Module:
    return model.transformer.ln_f if arch == "gpt2" else model.model.norm


@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
def test_resolves_the_decoder_blocks(arch: str) -> None:
    model = tiny_model(arch, layers=LAYERS)
    path, layers = resolve_layers(model)
    assert isinstance(layers, nn.ModuleList) and len(layers) == model.config.num_hidden_layers == LAYERS
    assert path == ("transformer.h" if arch == "gpt2" else "model.layers")
    assert model.get_submodule(path) is layers


@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
def test_layer_l_is_hidden_states_l_plus_1(arch: str) -> None:
    model = tiny_model(arch, layers=LAYERS)
    _, layers = resolve_layers(model)
    seen: dict[int, torch.Tensor] = {}

    def hook(layer: int):
        def fn(_mod: nn.Module, _args: object, out: object) -> None:
            seen[layer] = (out[0] if isinstance(out, tuple) else out).detach().clone()  # type: ignore[index]

        return fn

    handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(layers)]
    try:
        with torch.no_grad():
            out = model(IDS, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    hs = out.hidden_states
    assert len(hs) == LAYERS + 1
    for layer in range(LAYERS - 1):
        assert seen[layer].shape == hs[layer + 1].shape
        assert torch.equal(seen[layer], hs[layer + 1]), f"{arch} layer {layer}"
    # Last layer: Hugging Face reports it after the final norm; the block's own output is the pre-norm residual.
    last = seen[LAYERS - 1]
    with torch.no_grad():
        torch.testing.assert_close(_final_norm(model, arch)(last), hs[LAYERS], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(last, hs[LAYERS])


def test_finds_an_unknown_layout_by_searching() -> None:
    class Config:
        num_hidden_layers = 3

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = Config()
            self.stem = nn.ModuleList([nn.Linear(2, 2)])
            self.body = nn.Module()
            self.body.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    path, layers = resolve_layers(Custom())
    assert path == "body.blocks" and len(layers) == 3


def test_ambiguous_or_missing_layers_are_errors() -> None:
    class Config:
        num_hidden_layers = 2

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = Config()
            self.a = nn.ModuleList([nn.Identity(), nn.Identity()])
            self.b = nn.ModuleList([nn.Identity(), nn.Identity()])

    with pytest.raises(ValueError, match="2 ModuleLists"):
        resolve_layers(Two())
    with pytest.raises(ValueError, match="num_hidden_layers"):
        resolve_layers(nn.Linear(2, 2))
