"""SteeringRuntime's per-batch tables and readback, on identity layers (no model): what the hooks see and what
end_batch attributes to each request."""

from __future__ import annotations

import torch
from torch import nn

from steering_server.runtime import RequestTrack, SteeringRuntime
from steering_server.sampling import noise_key

H, L, K = 8, 3, 4


class _Id(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _runtime() -> tuple[SteeringRuntime, nn.ModuleList]:
    layers = nn.ModuleList([_Id() for _ in range(L)])
    rt = SteeringRuntime(layers, H, torch.device("cpu"), max_directions=K, max_slots=4, max_batch_tokens=32, max_rows=4)
    g = torch.Generator().manual_seed(0)
    for row in range(K):
        vecs = {layer: torch.nn.functional.normalize(torch.randn(H, generator=g), dim=0) for layer in range(L)}
        rt.write_direction(row, vecs)
    rt.live_rows = K
    return rt, layers


def _forward(layers: nn.ModuleList, x: torch.Tensor, rt: SteeringRuntime) -> torch.Tensor:
    """The batching manager's forward, as the runner runs it (the hooks act only inside it)."""
    h = x[None]  # (1, tokens, H)
    rt.serving_forward = True
    try:
        for layer in layers:
            h = layer(h)
    finally:
        rt.serving_forward = False
    return h[0]


def test_the_packed_table_is_written_in_place_and_padding_tokens_are_unsteered() -> None:
    rt, _ = _runtime()
    assert rt._host is rt.table  # on the CPU the host table is the device table: no copy at all
    address = rt.table.data_ptr()
    rt.tracks["a"] = RequestTrack("a", prompt_len=3, slots=(2, 2, 2), temperature=0.5, top_k=7, top_p=0.9, seed=1)
    rt.tracks["b"] = RequestTrack("b", prompt_len=2)
    rt.begin_batch([("a", 0, 3, True), ("b", 0, 2, True)])
    assert rt.token_slot[:6].tolist() == [2, 2, 2, 0, 0, 0]  # past the batch: slot 0 (padding is unsteered)
    assert rt.row_top_k[:2].tolist() == [7, 0] and rt.row_temperature[:2].tolist() == [0.5, 0.0]
    assert abs(rt.row_top_p[0].item() - 0.9) < 1e-12 and rt.row_order[:2].tolist() == [1, 0]  # greedy row first
    assert rt.row_key[:2].tolist() == [noise_key(1, 3), 0]  # the sampled row's noise at its position; greedy: none
    rt.begin_batch([("b", 2, 1, True)])
    assert rt.token_slot[:3].tolist() == [0, 0, 0] and rt.table.data_ptr() == address


def test_readback_covers_only_monitored_pairs_and_a_reprefill_is_not_read_twice() -> None:
    rt, layers = _runtime()
    rt.tracks["m"] = RequestTrack("m", prompt_len=4, monitored=((1, 2), (3, 0)))
    rt.tracks["u"] = RequestTrack("u", prompt_len=2)  # not monitored
    x = torch.randn(6, H, generator=torch.Generator().manual_seed(1))
    rt.begin_batch([("m", 0, 4, True), ("u", 0, 2, True)])
    assert sorted(rt._pairs) == sorted([2 * K + 1, 0 * K + 3])  # (layer * K + direction) of m's pairs only
    _forward(layers, x, rt)
    rt.end_batch()
    m = rt.tracks["m"]
    want_12 = float(x[3] @ rt.unit[2, 1])  # the last prompt token (position 3) is the first scored
    assert m.readings.keys() == {(1, 2), (3, 0)} and list(m.readings[(1, 2)]) == [3]
    assert abs(m.readings[(1, 2)][3] - want_12) < 1e-5
    # A reset request re-prefilled with other states: the first reading of a position wins.
    rt.begin_batch([("m", 0, 4, True)])
    _forward(layers, x[:4] * 5, rt)
    rt.end_batch()
    assert abs(m.readings[(1, 2)][3] - want_12) < 1e-5 and m.read_until == 4


def test_hooks_off_is_all_zero_tables_not_a_branch_in_the_hook() -> None:
    """`active = False` makes the batch's tables unsteered and unread; the hook itself never reads the flag, so a
    forward traced or captured in such a batch steers again once the tables say so."""
    rt, layers = _runtime()
    rt.skip_idle_work = False  # the graph/compile path: the full step on every forward
    rt.alpha[:, 1, 0] = 1.0  # slot 1 ablates direction row 0 at every layer
    rt.tracks["s"] = RequestTrack("s", prompt_len=2, slots=(1, 1, 1), monitored=((0, 1),))
    x = torch.randn(2, H, generator=torch.Generator().manual_seed(2))
    rt.active = False
    rt.begin_batch([("s", 0, 2, True)])
    assert torch.equal(_forward(layers, x, rt), x) and not rt._monitored
    rt.active = True
    rt.begin_batch([("s", 0, 2, True)])
    out = _forward(layers, x, rt)
    assert not torch.equal(out, x)
    assert (out @ rt.unit[L - 1, 0]).abs().max() < 1e-5  # the direction is gone after the last layer


def test_each_token_takes_the_slot_of_its_position_class_also_after_a_reset() -> None:
    rt, _ = _runtime()
    # Slots per class: prompt before its last token, the last prompt token, generated tokens.
    rt.tracks["p"] = RequestTrack("p", prompt_len=4, slots=(1, 2, 3))
    rt.begin_batch([("p", 0, 4, True)])  # the prompt: three body tokens and the last one
    assert rt.token_slot[:4].tolist() == [1, 1, 1, 2]
    rt.begin_batch([("p", 4, 1, True)])  # decoding: generated positions
    assert rt.token_slot[:1].tolist() == [3]
    rt.begin_batch([("p", 0, 6, True)])  # re-prefilled after a reset: classes follow absolute positions
    assert rt.token_slot[:6].tolist() == [1, 1, 1, 2, 3, 3]
    assert rt.tracks["p"].held_slots == [1, 2, 3]
    rt.tracks["q"] = RequestTrack("q", prompt_len=3, slots=(0, 5, 0))  # the last prompt token only
    rt.begin_batch([("q", 0, 3, True)])
    assert rt.token_slot[:3].tolist() == [0, 0, 5] and rt.tracks["q"].held_slots == [5]
