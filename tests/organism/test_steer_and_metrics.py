"""Reference steering arithmetic, capture parity (hooks vs nnsight), AUROC, intervals, kappa and calibration."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from steering_server.organism.capture import capture, capture_nnsight, decoder_layers
from steering_server.organism.corpus import conversations, split_questions
from steering_server.organism.diffmeans import (
    calibrate,
    cosine,
    diff_of_means,
    false_positive_rate,
    random_like,
    shuffled_diff_of_means,
)
from steering_server.organism.experiments import match_strength
from steering_server.organism.metrics import KLProbe, auroc, bootstrap, cohens_kappa
from steering_server.organism.steer import RefTerm, steering
from steering_server.organism.tokenizer import build_tokenizer
from steering_server.organism.train import encode


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    data = encode(tok, conversations(split_questions(0)["eval"], 12, seed=0, cue_share=0.5))
    return model, tok, data


def _block_output(model, ids, layer, steer=None):
    """Block `layer`'s output, read by a hook registered after any steering hooks (so it sees their result)."""
    seen = {}
    with torch.no_grad(), (steer or _null)():
        handle = decoder_layers(model)[layer].register_forward_hook(lambda m, i, o: seen.__setitem__("h", o.clone()))
        try:
            model(input_ids=ids)
        finally:
            handle.remove()
    return seen["h"]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_ablation_is_exact_and_its_hooks_are_removed(tiny):
    model, _tok, data = tiny
    ids = torch.tensor([data[0].ids])
    v = torch.randn(32, generator=torch.Generator().manual_seed(3))
    d = v / v.norm()
    plain = _block_output(model, ids, 1)
    half = _block_output(model, ids, 1, lambda: steering(model, [RefTerm({0: v, 1: v}, "ABLATE", 0.5, [1])]))
    assert torch.allclose(half, plain - 0.5 * (plain @ d).unsqueeze(-1) * d, atol=1e-5)
    full = _block_output(model, ids, 1, lambda: steering(model, [RefTerm({1: v}, "ABLATE", 1.0, [1])]))
    assert (full @ d).abs().max() < 1e-4  # strength 1 removes the component
    assert all(not layer._forward_hooks for layer in decoder_layers(model))


def test_hook_capture_matches_nnsight_and_hidden_states(tiny):
    model, tok, data = tiny
    special = set(tok.all_special_ids)
    a = capture(model, data, [0, 1, 2], tok.pad_token_id, special, batch_size=5)
    b = capture_nnsight(model, tok, data, [0, 1, 2], tok.pad_token_id, special, batch_size=5)
    for layer in (0, 1, 2):
        assert torch.allclose(a.tokens[layer], b.tokens[layer], atol=1e-6)
        assert torch.allclose(a.mean[layer], b.mean[layer], atol=1e-6)
        assert torch.allclose(a.last_prompt[layer], b.last_prompt[layer], atol=1e-6)
    # Layer l is hidden_states[l + 1] for every block but the last (whose entry has the final norm applied).
    e = data[0]
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([e.ids]), output_hidden_states=True).hidden_states
    assert torch.allclose(a.last_prompt[1][0], hs[2][0, e.answer_start - 1], atol=1e-5)
    # Answer tokens exclude special tokens (the closing <|end|>).
    assert a.tokens[0].shape[0] == sum(
        sum(1 for t in x.ids[x.answer_start:] if t not in special) for x in data)


def test_auroc_and_calibration():
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([0.0]), torch.tensor([1.0])) == 0.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5
    assert abs(auroc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])) - 0.75) < 1e-12
    benign = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    cal = calibrate({"token": benign}, 0.05)["token"]
    assert abs(cal.mu) < 0.05 and abs(cal.sigma - 1) < 0.05 and cal.n == 5000
    held = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    assert abs(false_positive_rate(cal, held) - 0.05) < 0.015


def test_difference_of_means_and_controls():
    pos = {0: torch.tensor([[1.0, 0.0], [3.0, 0.0]])}
    neg = {0: torch.tensor([[0.0, 1.0]])}
    assert torch.equal(diff_of_means(pos, neg)[0], torch.tensor([2.0, -1.0]))
    r = random_like({0: torch.tensor([3.0, 4.0])}, 7)
    assert abs(float(r[0].norm()) - 5.0) < 1e-5 and torch.equal(r[0], random_like({0: torch.tensor([3.0, 4.0])}, 7)[0])


def test_clamp_and_add_reference_arithmetic(tiny):
    model, _tok, data = tiny
    ids = torch.tensor([data[0].ids])
    v = torch.randn(32, generator=torch.Generator().manual_seed(4))
    d = v / v.norm()
    plain = _block_output(model, ids, 1)
    # CLAMP c with calibration (mu, sigma) sets h.d to mu + c sigma at every position.
    clamp = RefTerm({1: v}, "CLAMP", 0.5, [1], clamp_calibration={1: (2.0, 4.0)})
    clamped = _block_output(model, ids, 1, lambda: steering(model, [clamp]))
    assert torch.allclose(clamped @ d, torch.full_like(clamped @ d, 4.0), atol=1e-4)
    assert torch.allclose(clamped - (clamped @ d).unsqueeze(-1) * d, plain - (plain @ d).unsqueeze(-1) * d, atol=1e-4)
    added = _block_output(model, ids, 1, lambda: steering(model, [RefTerm({1: v}, "ADD", -2.0, [1])]))
    assert torch.allclose(added, plain - 2.0 * v, atol=1e-5)
    # Two terms read the same pre-steering state (simultaneous), so their order does not matter.
    both = [clamp, RefTerm({1: v}, "ADD", 1.0, [1])]
    a = _block_output(model, ids, 1, lambda: steering(model, both))
    b = _block_output(model, ids, 1, lambda: steering(model, both[::-1]))
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, clamped + v, atol=1e-4)


def test_kl_is_zero_between_equals_and_positive_under_steering_only_where_it_steers(tiny):
    model, tok, data = tiny
    v = {1: torch.randn(32, generator=torch.Generator().manual_seed(5))}
    probe = KLProbe(model, [], data[:4], tok.pad_token_id)
    assert probe.to(model, []) == 0.0
    assert probe.to(model, [RefTerm(v, "ABLATE", 1.0, [1])]) > 0.0
    # Steering only the prompt still changes every answer prediction (through attention), by less than everywhere.
    everywhere = probe.to(model, [RefTerm(v, "ADD", 2.0, [1])])
    prompt_only = probe.to(model, [RefTerm(v, "ADD", 2.0, [1], positions="PROMPT")])
    assert 0.0 < prompt_only < everywhere


def test_bootstrap_interval_covers_the_mean_and_kappa_counts_agreement_beyond_chance():
    est = bootstrap([0.0, 0.5, 1.0, 0.25] * 10)
    assert est.lo < est.value < est.hi and est.value == 0.4375
    flat = bootstrap([0.3] * 5)
    assert abs(flat.lo - 0.3) < 1e-12 and abs(flat.hi - 0.3) < 1e-12
    assert cohens_kappa([True, False, True, False], [True, False, True, False]) == 1.0
    assert cohens_kappa([True, True, False, False], [True, False, True, False]) == 0.0
    assert cohens_kappa([False] * 4, [False] * 4) == 1.0


def test_match_strength_finds_the_strength_with_the_target_kl_or_says_it_did_not():
    calls = []
    m = match_strength(2.25, lambda a: calls.append(a) or a * a, limit=100.0)  # KL grows with the strength
    assert abs(m.kl - 2.25) <= 0.02 * 2.25 and m.kl == m.strength**2 and m.matched
    assert len(calls) < 10  # stops once within the search tolerance, without evaluating its answer twice
    above = match_strength(0.5, lambda a: 1.0 + a, limit=100.0)  # already above the target without steering
    assert above.strength == 0.0 and not above.matched
    short = match_strength(2.25, lambda a: a * a, limit=1.0)  # the server would refuse the strength needed
    assert short.strength == 1.0 and short.kl == 1.0 and not short.matched


def test_a_shuffled_label_control_is_not_a_copy_of_the_direction():
    """Amendment 5: with a strong true direction (a shift of 5 against unit noise), every shuffled-label control
    splits the labels evenly, so the shift cancels and the control's cosine with the truth stays small; each group
    still mixes real examples (the control is not the zero vector)."""
    g = torch.Generator().manual_seed(0)
    shift = torch.zeros(64)
    shift[0] = 5.0
    pos = {0: torch.randn(200, 64, generator=g) + shift}
    neg = {0: torch.randn(200, 64, generator=g)}
    truth = diff_of_means(pos, neg)[0]
    for seed in range(20):
        control = shuffled_diff_of_means(pos, neg, seed)[0]
        assert abs(cosine(control, truth)) < 0.35
        assert 0.05 < float(control.norm()) < float(truth.norm()) / 5
