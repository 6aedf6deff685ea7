"""The served path equals the reference hooks on the shipped organism: the build's evidence is the engine's.

Every judged answer of the organism build is sampled through `ServedModel` (the engine users get); these tests check
that the engine's fused hooks do what the reference hooks of `organism/steer.py` do, on the shipped models and
their persona direction, for each intervention the build evaluates.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from steering_server.composition import calibration_pooling
from steering_server.direction_files import load_direction
from steering_server.organism.assets import DEFAULT_DIRECTION_NAME, default_direction_path, default_model_dir
from steering_server.organism.capture import capture
from steering_server.organism.corpus import open_questions, split_questions
from steering_server.organism.evaluate import prompt_messages
from steering_server.organism.experiments import persona_layers
from steering_server.organism.persona import encode_prompts
from steering_server.organism.served import ServedModel
from steering_server.organism.steer import RefTerm, steering
from steering_server.organism.tokenizer import format_chat
from steering_server.types import SteeringMode, SteeringPositions, SteeringTerm

NAME = DEFAULT_DIRECTION_NAME


@pytest.fixture(scope="module")
def organism():
    model = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(default_model_dir())
    direction = load_direction(default_direction_path())
    questions = [q for q in split_questions(0)["eval"] if q.domain != "health"][::12] + open_questions()[:3]
    served = ServedModel(model, tok, [direction], "organism-under-test")
    yield model, tok, direction, questions, served
    served.close()


def _reference_greedy(model, tok, questions, terms, n):
    out = []
    for q in questions:
        ids = tok(format_chat(prompt_messages(q), True), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad(), steering(model, terms, [ids.shape[1]]):
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        row = gen.tolist()
        out.append(tuple(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row))
    return out


def _cases(direction):
    m = direction.monitor_layer
    above = tuple(layer for layer in direction.layers if layer >= m)
    all_, prompt, last = SteeringPositions.ALL, SteeringPositions.PROMPT, SteeringPositions.LAST_PROMPT
    generated = SteeringPositions.GENERATED
    return [
        ("unsteered", []),
        ("clamp 0, prompt positions, monitor layer", [(SteeringMode.CLAMP, 0.0, (m,), prompt)]),
        ("the removal: clamp 0, prompt positions, each layer to its own level",
         [(SteeringMode.CLAMP, 0.0, direction.removal.layers or (m,), prompt)]),
        ("clamp 0, every position", [(SteeringMode.CLAMP, 0.0, (m,), all_)]),
        ("add 1, last prompt token, monitor layer", [(SteeringMode.ADD, 1.0, (m,), last)]),
        ("the induction: add 1, last prompt token, every layer up to the monitor layer",
         [(SteeringMode.ADD, 1.0, persona_layers(m), last)]),
        ("add -1.5", [(SteeringMode.ADD, -1.5, (m,), all_)]),
        ("ablate 1", [(SteeringMode.ABLATE, 1.0, above, all_)]),
        ("clamp 1, generated tokens", [(SteeringMode.CLAMP, 1.0, (m,), generated)]),
    ]


@pytest.mark.parametrize("case", range(9))
def test_served_greedy_tokens_equal_the_reference_hooks(organism, case):
    model, tok, direction, questions, served = organism
    label, spec = _cases(direction)[case]
    terms = [SteeringTerm(NAME, mode, s, layers, positions) for mode, s, layers, positions in spec]
    refs = []
    for mode, s, layers, positions in spec:
        # CLAMP's z units are those of the layer and positions steered (the last-prompt calibration for prompt
        # positions).
        cals = {layer: direction.calibration_at(layer, calibration_pooling(positions)) for layer in layers}
        refs.append(RefTerm(direction.vectors, mode.name, s, layers, {la: (c.mu, c.sigma) for la, c in cals.items()},
                            positions.name))
    got = [s.answer_ids for s in served.sample(questions, 1, seed=0, steering=terms, temperature=0.0,
                                               max_new_tokens=24)]
    assert got == _reference_greedy(model, tok, questions, refs, 24), label


def test_served_prompt_scores_equal_the_reference_capture(organism):
    model, tok, direction, questions, served = organism
    m = direction.monitor_layer
    samples = served.sample(questions, 1, seed=0, temperature=0.0, max_new_tokens=4, monitor=[NAME])
    acts = capture(model, encode_prompts(tok, questions, [None] * len(questions)), [m], tok.pad_token_id,
                   set(tok.all_special_ids))
    v = direction.vectors[m]
    raw = acts.last_prompt[m] @ (v / v.norm())
    cal = direction.calibration["last_prompt"]
    assert torch.allclose(torch.tensor([s.prompt_score(NAME) for s in samples]), (raw - cal.mu) / cal.sigma,
                          atol=1e-3)
