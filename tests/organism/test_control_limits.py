"""The strengths the build's controls may be matched up to are ones the server admits: KL matching searches up to
`Lab._clamp_limit` (CLAMP, removal) and `Lab._add_limit` (ADD, induction), and a request at that strength, through the
served path of the model it runs on, is accepted; one past the server's push bound is refused."""

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from steering_server.containment import MAX_PUSH_RATIO
from steering_server.direction_files import load_direction
from steering_server.errors import InvalidArgumentError
from steering_server.organism.assets import base_model_dir, builtin_directions, default_model_dir
from steering_server.organism.config import preset
from steering_server.organism.corpus import split_questions
from steering_server.organism.experiments import INDUCE_AT, REMOVE_AT, Lab, persona_layers
from steering_server.types import SteeringMode, SteeringTerm


@pytest.fixture(scope="module")
def lab():
    def load(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    tok = AutoTokenizer.from_pretrained(default_model_dir())
    dirs = {name: load_direction(path) for name, path in builtin_directions().items()}
    # No KL examples: only the served models and the directions are used here.
    lab = Lab(load(base_model_dir()), load(default_model_dir()), tok, dirs, [], SimpleNamespace(examples=[]),
              preset("full"))
    yield lab
    lab.close()


def _answers(lab: Lab, model: str, term: SteeringTerm) -> int:
    question = split_questions(0)["eval"][:1]
    return len(lab.served[model].sample(question, 1, seed=0, steering=[term], max_new_tokens=2))


def _bound(lab: Lab, model: str, layer: int) -> float:
    norms = lab.served[model].engine.registry.residual_norms
    assert norms is not None
    return MAX_PUSH_RATIO * float(norms[layer])


@pytest.mark.parametrize("name", ["misalignment", "model_diff"])
def test_the_clamp_limit_is_admitted_and_the_bound_past_it_is_refused(lab, name):
    layers = persona_layers(lab.layer)
    z = lab._clamp_limit(name)
    assert z > 0
    assert _answers(lab, "ft", SteeringTerm(name, SteeringMode.CLAMP, z, layers, REMOVE_AT)) == 1
    # Past the bound at one layer: the target mu + z sigma is 5% beyond the push the server allows there.
    cal = lab.dirs[name].calibration_at(layers[-1], "last_prompt")
    over = (1.05 * _bound(lab, "ft", layers[-1]) + abs(cal.mu)) / cal.sigma
    with pytest.raises(InvalidArgumentError, match="residual norm"):
        _answers(lab, "ft", SteeringTerm(name, SteeringMode.CLAMP, over, layers, REMOVE_AT))


@pytest.mark.parametrize("name", ["misalignment", "model_diff"])
def test_the_add_limit_is_admitted_on_the_base_model_and_a_tenth_more_is_refused(lab, name):
    layers = persona_layers(lab.layer)
    a = lab._add_limit(name)
    assert _answers(lab, "base", SteeringTerm(name, SteeringMode.ADD, a, layers, INDUCE_AT)) == 1
    # The limit is 90% of the base server's bound at its tightest layer: 1/0.9 of it plus 2% is past the bound.
    with pytest.raises(InvalidArgumentError, match="residual norm"):
        _answers(lab, "base", SteeringTerm(name, SteeringMode.ADD, a / 0.9 * 1.02, layers, INDUCE_AT))
