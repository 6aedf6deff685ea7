"""The bad requests every server must refuse with a status and a message naming the field.

Parametrised by the model's shape and the server's limits, so the same table runs against the fake engine
(test_validation.py) and the real one (test_real_engine.py). The server has a direction named "misalignment"
with vectors at every layer.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, NamedTuple

import grpc
import numpy as np
import torch
from safetensors.torch import save as st_save
from steering_client import pb

from steering_server.types import EngineLimits

__all__ = ["BadInput", "bad_inputs"]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DENIED = grpc.StatusCode.PERMISSION_DENIED


class BadInput(NamedTuple):
    name: str
    rpc: str
    request: Any
    code: grpc.StatusCode
    field: str  # the message must start with this


def _gen(**fields: Any) -> pb.GenerateRequest:
    fields.setdefault("prompt", "Hello")
    return pb.GenerateRequest(**fields)


def _term(**fields: Any) -> pb.SteeringTerm:
    fields.setdefault("direction", "misalignment")
    fields.setdefault("mode", pb.ABLATE)
    return pb.SteeringTerm(**fields)


def _cond(direction: str = "misalignment", threshold: float = 0.0, scope: int = pb.PROMPT_SCORE,
          **fields: Any) -> pb.SteeringTerm:
    """ABLATE 1 on misalignment, steering only once the condition holds."""
    term = _term(**fields)
    term.condition.CopyFrom(pb.SteeringCondition(direction=direction, threshold=threshold, scope=scope))
    return term


def _rule(threshold: float | None = 1.0, **fields: Any) -> pb.AlertRule:
    fields.setdefault("direction", "misalignment")
    fields.setdefault("action", pb.RECORD)
    return pb.AlertRule(threshold=threshold, **fields)


def _alerts(*rules: pb.AlertRule) -> pb.SetSteeringRequest:
    return pb.SetSteeringRequest(policy=pb.SteeringPolicy(alerts=rules))


def _sampling(**fields: Any) -> pb.GenerateRequest:
    return _gen(sampling=pb.SamplingParams(**fields))


def _put(**fields: Any) -> pb.PutDirectionRequest:
    fields.setdefault("name", "probe")
    return pb.PutDirectionRequest(**fields)


class _Pickled:
    """An object a .pt may only hold through a full unpickle (refused: weights_only)."""


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _pt(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _sae(hidden: int, d_sae: int = 8) -> tuple[bytes, str]:
    """SAE-Lens weights and cfg.json (layer 0) of a JumpReLU SAE with d_sae latents."""
    weights = st_save({
        "W_enc": torch.ones(hidden, d_sae), "W_dec": torch.ones(d_sae, hidden), "b_enc": torch.zeros(d_sae),
        "b_dec": torch.zeros(hidden), "threshold": torch.zeros(d_sae),
    })
    cfg = {"architecture": "jumprelu", "d_in": hidden, "d_sae": d_sae,
           "metadata": {"hook_name": "blocks.0.hook_resid_post"}}
    return weights, json.dumps(cfg)


def bad_inputs(hidden: int, num_layers: int, vocab: int, limits: EngineLimits) -> list[BadInput]:
    def vec(layer: int | None = 1, values: list[float] | None = None) -> pb.LayerVector:
        lv = pb.LayerVector(values=[0.5] * hidden if values is None else values)
        if layer is not None:
            lv.layer = layer
        return lv

    nan_vector = [math.nan] + [1.0] * (hidden - 1)
    variants = [pb.Variant(name=f"v{i}") for i in range(limits.max_variants + 1)]
    too_long = limits.max_prompt_tokens + 1
    # fmt: off
    return [
        BadInput("empty prompt", "Generate", pb.GenerateRequest(), INVALID, "prompt"),
        BadInput("two inputs", "Generate", _gen(prompt_token_ids=[1, 2]), INVALID, "prompt_token_ids"),
        BadInput("bad chat role", "Generate", pb.GenerateRequest(messages=[pb.ChatMessage(role="robot")]), INVALID,
                 "messages[0].role"),
        BadInput("token id outside the vocabulary", "Generate", pb.GenerateRequest(prompt_token_ids=[1, vocab]),
                 INVALID, "prompt_token_ids[1]"),
        # Issue 8, finding 10: one code for every size limit a request breaks (RESOURCE_EXHAUSTED is for capacity).
        BadInput("oversized token prompt", "Generate", pb.GenerateRequest(prompt_token_ids=[65] * too_long),
                 INVALID, "prompt_token_ids"),
        BadInput("oversized text prompt", "Generate", _gen(prompt="x" * too_long), INVALID, "prompt"),
        BadInput("huge text prompt", "Generate", _gen(prompt="x" * 1000 * too_long), INVALID, "prompt"),
        BadInput("max_new_tokens 0", "Generate", _sampling(max_new_tokens=0), INVALID, "sampling.max_new_tokens"),
        BadInput("max_new_tokens over the limit", "Generate", _sampling(max_new_tokens=limits.max_new_tokens + 1),
                 INVALID, "sampling.max_new_tokens"),
        BadInput("negative temperature", "Generate", _sampling(temperature=-0.5), INVALID, "sampling.temperature"),
        BadInput("NaN temperature", "Generate", _sampling(temperature=math.nan), INVALID, "sampling.temperature"),
        BadInput("infinite temperature", "Generate", _sampling(temperature=math.inf), INVALID, "sampling.temperature"),
        BadInput("top_p 0", "Generate", _sampling(top_p=0.0), INVALID, "sampling.top_p"),
        BadInput("top_p above 1", "Generate", _sampling(top_p=1.5), INVALID, "sampling.top_p"),
        BadInput("NaN top_p", "Generate", _sampling(top_p=math.nan), INVALID, "sampling.top_p"),
        BadInput("empty stop", "Generate", _sampling(stop=[""]), INVALID, "sampling.stop[0]"),
        BadInput("too many stops", "Generate", _sampling(stop=["x"] * 17), INVALID, "sampling.stop"),
        BadInput("unknown direction", "Generate", _gen(steering=[_term(direction="nope")]), NOT_FOUND,
                 "steering[0].direction"),
        BadInput("empty direction name", "Generate", _gen(steering=[_term(direction="")]), INVALID,
                 "steering[0].direction"),
        BadInput("unsafe direction name", "Generate", _gen(steering=[_term(direction="../x")]), INVALID,
                 "steering[0].direction"),
        BadInput("unspecified mode", "Generate", _gen(steering=[_term(mode=pb.STEERING_MODE_UNSPECIFIED)]), INVALID,
                 "steering[0].mode"),
        BadInput("unknown mode", "Generate", _gen(steering=[_term(mode=9)]), INVALID, "steering[0].mode"),
        BadInput("unknown positions", "Generate", _gen(steering=[_term(positions=9)]), INVALID,
                 "steering[0].positions"),
        BadInput("NaN strength", "Generate", _gen(steering=[_term(strength=math.nan)]), INVALID,
                 "steering[0].strength"),
        BadInput("infinite strength", "Generate", _gen(steering=[_term(strength=-math.inf)]), INVALID,
                 "steering[0].strength"),
        BadInput("huge strength", "Generate", _gen(steering=[_term(strength=1e9)]), INVALID, "steering[0].strength"),
        BadInput("layer out of range", "Generate", _gen(steering=[_term(layers=[num_layers])]), INVALID,
                 "steering[0].layers[0]"),
        BadInput("negative layer", "Generate", _gen(steering=[_term(layers=[-1])]), INVALID, "steering[0].layers[0]"),
        BadInput("repeated layer", "Generate", _gen(steering=[_term(layers=[1, 1])]), INVALID,
                 "steering[0].layers[1]"),
        BadInput("inducing without red-teaming", "Generate", _gen(steering=[_term(mode=pb.ADD, strength=2)]), DENIED,
                 ""),
        BadInput("unknown monitored direction", "Generate", _gen(monitor=pb.MonitorOptions(directions=["nope"])),
                 NOT_FOUND, "monitor.directions[0]"),
        BadInput("unsafe monitored name", "Generate", _gen(monitor=pb.MonitorOptions(directions=["a b"])), INVALID,
                 "monitor.directions[0]"),
        BadInput("NaN alarm threshold", "Generate", _gen(monitor=pb.MonitorOptions(stop_threshold=math.nan)),
                 INVALID, "monitor.stop_threshold"),
        BadInput("monitor disabled with directions", "Generate",
                 _gen(monitor=pb.MonitorOptions(disabled=True, directions=["x"])), INVALID, "monitor.directions"),
        BadInput("stream: NaN strength", "GenerateStream", _gen(steering=[_term(strength=math.nan)]), INVALID,
                 "steering[0].strength"),
        BadInput("stream: empty prompt", "GenerateStream", pb.GenerateRequest(), INVALID, "prompt"),
        BadInput("stream: unknown direction", "GenerateStream", _gen(steering=[_term(direction="nope")]), NOT_FOUND,
                 "steering[0].direction"),
        BadInput("too many variants", "Compare", pb.CompareRequest(prompt="Hi", variants=variants), INVALID,
                 "variants"),
        BadInput("duplicate variant", "Compare",
                 pb.CompareRequest(prompt="Hi", variants=[pb.Variant(name="a"), pb.Variant(name="a")]), INVALID,
                 "variants[1].name"),
        BadInput("empty variant name", "Compare", pb.CompareRequest(prompt="Hi", variants=[pb.Variant()]), INVALID,
                 "variants[0].name"),
        BadInput("variant with a bad strength", "Compare",
                 pb.CompareRequest(prompt="Hi", variants=[pb.Variant(name="a", steering=[_term(strength=math.inf)])]),
                 INVALID, "variants[0].steering[0].strength"),
        BadInput("variant with an unknown direction", "Compare",
                 pb.CompareRequest(prompt="Hi", variants=[pb.Variant(name="a", steering=[_term(direction="nope")])]),
                 NOT_FOUND, "variants[0].steering[0].direction"),
        BadInput("compare: empty prompt", "Compare", pb.CompareRequest(), INVALID, "prompt"),
        BadInput("score: two responses", "Score", pb.ScoreRequest(prompt="Hi", response="x", response_token_ids=[1]),
                 INVALID, "response"),
        BadInput("score: token outside the vocabulary", "Score",
                 pb.ScoreRequest(prompt="Hi", response_token_ids=[vocab]), INVALID, "response_token_ids[0]"),
        BadInput("score: unknown direction", "Score", pb.ScoreRequest(prompt="Hi", steering=[_term(direction="x")]),
                 NOT_FOUND, "steering[0].direction"),
        BadInput("score: empty prompt", "Score", pb.ScoreRequest(response="x"), INVALID, "prompt"),
        BadInput("put: no vector", "PutDirection", _put(), INVALID, "vectors"),
        BadInput("put: both sources", "PutDirection", _put(vectors=[vec()], safetensors=b"x"), INVALID, "vectors"),
        BadInput("put: empty name", "PutDirection", _put(name="", vectors=[vec()]), INVALID, "name"),
        BadInput("put: unsafe name", "PutDirection", _put(name="../../etc/passwd", vectors=[vec()]), INVALID, "name"),
        BadInput("put: long name", "PutDirection", _put(name="x" * 65, vectors=[vec()]), INVALID, "name"),
        BadInput("put: wrong size", "PutDirection", _put(vectors=[vec(values=[1.0] * (hidden + 1))]), INVALID,
                 "vectors[0].values"),
        BadInput("put: all zero", "PutDirection", _put(vectors=[vec(values=[0.0] * hidden)]), INVALID,
                 "vectors[0].values"),
        BadInput("put: NaN", "PutDirection", _put(vectors=[vec(values=nan_vector)]), INVALID, "vectors[0].values"),
        BadInput("put: infinite", "PutDirection", _put(vectors=[vec(values=[math.inf] * hidden)]), INVALID,
                 "vectors[0].values"),
        BadInput("put: no layer", "PutDirection", _put(vectors=[vec(layer=None)]), INVALID, "vectors[0].layer"),
        BadInput("put: layer out of range", "PutDirection", _put(vectors=[vec(layer=num_layers)]), INVALID,
                 "vectors[0].layer"),
        BadInput("put: negative layer", "PutDirection", _put(vectors=[vec(layer=-1)]), INVALID, "vectors[0].layer"),
        BadInput("put: repeated layer", "PutDirection", _put(vectors=[vec(1), vec(1)]), INVALID, "vectors[1].layer"),
        BadInput("put: no monitor layer", "PutDirection", _put(vectors=[vec(0), vec(1)]), INVALID, "monitor_layer"),
        BadInput("put: monitor layer without a vector", "PutDirection", _put(vectors=[vec(1)], monitor_layer=0),
                 INVALID, "monitor_layer"),
        BadInput("put: bad calibration", "PutDirection",
                 _put(vectors=[vec(1)], calibration={"token": pb.Calibration(mu=0, sigma=0)}), INVALID,
                 "calibration['token']"),
        BadInput("put: unknown pooling", "PutDirection",
                 _put(vectors=[vec(1)], calibration={"p": pb.Calibration(mu=0, sigma=1)}), INVALID, "calibration['p']"),
        BadInput("put: garbage safetensors", "PutDirection",
                 _put(safetensors=b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"), INVALID, "safetensors"),
        BadInput("put: truncated safetensors", "PutDirection", _put(safetensors=b"\xff" * 12), INVALID,
                 "safetensors"),
        BadInput("put: file and vectors", "PutDirection", _put(vectors=[vec()], file=b"x"), INVALID, "vectors"),
        BadInput("put: format without a file", "PutDirection", _put(vectors=[vec()], format="npy"), INVALID, "file"),
        BadInput("put: unknown format", "PutDirection", _put(file=b"x", format="onnx"), INVALID, "format"),
        BadInput("put: pickled object in a .pt", "PutDirection", _put(file=_pt({"v": _Pickled()})), INVALID, "file"),
        BadInput("put: ambiguous table", "PutDirection",
                 _put(file=_npy(np.ones((num_layers + 1, hidden), np.float32))), INVALID, "numbering"),
        BadInput("put: table of the wrong width", "PutDirection",
                 _put(file=_npy(np.ones((num_layers, hidden + 1), np.float32))), INVALID, "file.vectors[0]"),
        BadInput("put: table with NaN", "PutDirection",
                 _put(file=_npy(np.full((num_layers, hidden), np.nan, np.float32))), INVALID, "file.vectors[0]"),
        BadInput("put: raw vector without a layer", "PutDirection",
                 _put(file=_pt(torch.ones(hidden)), format="pt"), INVALID, "monitor_layer"),
        BadInput("put: feature of a non-SAE file", "PutDirection",
                 _put(file=_npy(np.ones(hidden, np.float32)), monitor_layer=0, feature=1), INVALID, "feature"),
        BadInput("put: unknown SAE feature", "PutDirection",
                 _put(file=_sae(hidden)[0], sae_config=_sae(hidden)[1], feature=8), INVALID, "feature"),
        BadInput("put: SAE without its cfg.json", "PutDirection", _put(file=_sae(hidden)[0], feature=1), INVALID,
                 "sae_config"),
        BadInput("get: unknown", "GetDirection", pb.GetDirectionRequest(name="nope"), NOT_FOUND, "name"),
        BadInput("get: unsafe name", "GetDirection", pb.GetDirectionRequest(name="a/b"), INVALID, "name"),
        BadInput("delete: unknown", "DeleteDirection", pb.DeleteDirectionRequest(name="nope"), NOT_FOUND,
                 "name"),
        BadInput("delete: empty name", "DeleteDirection", pb.DeleteDirectionRequest(), INVALID, "name"),
        BadInput("policy: NaN strength", "SetSteering",
                 pb.SetSteeringRequest(policy=pb.SteeringPolicy(terms=[_term(strength=math.nan)])), INVALID,
                 "policy.terms[0].strength"),
        BadInput("policy: unknown direction", "SetSteering",
                 pb.SetSteeringRequest(policy=pb.SteeringPolicy(terms=[_term(direction="x")])), NOT_FOUND,
                 "policy.terms[0].direction"),
        # Issue 8: the engine's rules, the same on the fake and the real engine (findings 1, 2, 9, 10).
        BadInput("ABLATE above 1 reflects", "Generate", _gen(steering=[_term(strength=2)]), INVALID, "steering[0]"),
        BadInput("ABLATE terms totalling above 1", "Generate",
                 _gen(steering=[_term(strength=1.5), _term(strength=-0.5)]), INVALID, "steering["),
        BadInput("amplifying ABLATE", "Generate", _gen(steering=[_term(strength=-1)]), DENIED, "steering[0]"),
        BadInput("CLAMP above the mean", "Generate", _gen(steering=[_term(mode=pb.CLAMP, strength=1)]), DENIED,
                 "steering[0]"),
        BadInput("net push that induces", "Generate",
                 _gen(steering=[_term(mode=pb.ADD, strength=-1), _term(mode=pb.ADD, strength=2)]), DENIED, "steering["),
        BadInput("push beyond the residual norm", "Generate", _gen(steering=[_term(mode=pb.ADD, strength=-1000)]),
                 INVALID, "steering"),
        BadInput("too many terms", "Generate", _gen(steering=[_term()] * 65), INVALID, "steering"),
        BadInput("too many chat messages", "Generate",
                 pb.GenerateRequest(messages=[pb.ChatMessage(role="user")] * 1025), INVALID, "messages"),
        BadInput("compare: bad sampling names sampling", "Compare",
                 pb.CompareRequest(prompt="Hi", sampling=pb.SamplingParams(max_new_tokens=0)), INVALID,
                 "sampling.max_new_tokens"),
        BadInput("compare: unknown monitored direction", "Compare",
                 pb.CompareRequest(prompt="Hi", monitor=pb.MonitorOptions(directions=["nope"])), NOT_FOUND,
                 "monitor.directions[0]"),
        BadInput("put: calibration beyond the residual norm", "PutDirection",
                 _put(vectors=[vec(1)], calibration={"token": pb.Calibration(mu=1e300, sigma=1)}), INVALID,
                 "calibration['token']"),
        BadInput("put: a removal that induces", "PutDirection",
                 _put(vectors=[vec(1)], removal=pb.Removal(mode=pb.CLAMP, strength=1)), INVALID, "removal"),
        BadInput("put: a removal without a mode", "PutDirection", _put(vectors=[vec(1)], removal=pb.Removal()),
                 INVALID, "removal.mode"),
        BadInput("policy: ABLATE above 1", "SetSteering",
                 pb.SetSteeringRequest(policy=pb.SteeringPolicy(terms=[_term(strength=3)])), INVALID,
                 "policy.terms[0]"),
        BadInput("policy: inducing", "SetSteering",
                 pb.SetSteeringRequest(policy=pb.SteeringPolicy(terms=[_term(mode=pb.ADD, strength=1)])), DENIED,
                 "policy.terms[0]"),
        # Issue 10: conditional steering and server-wide alert rules.
        BadInput("condition on an unknown direction", "Generate",
                 _gen(steering=[_cond(direction="nope")]), NOT_FOUND, "steering[0].condition.direction"),
        BadInput("condition with an unsafe name", "Generate",
                 _gen(steering=[_cond(direction="a b")]), INVALID, "steering[0].condition.direction"),
        BadInput("condition with a NaN threshold", "Generate",
                 _gen(steering=[_cond(threshold=math.nan)]), INVALID, "steering[0].condition.threshold"),
        BadInput("condition with an unknown scope", "Generate",
                 _gen(steering=[_cond(scope=7)]), INVALID, "steering[0].condition.scope"),
        BadInput("condition read above a steered layer", "Generate",
                 _gen(steering=[_cond(layers=[0])]), INVALID, "steering[0].condition"),
        BadInput("running condition on prompt positions", "Generate",
                 _gen(steering=[_cond(scope=pb.RUNNING_SCORE, positions=pb.PROMPT_POSITIONS)]), INVALID,
                 "steering[0].positions"),
        BadInput("conditional push that induces", "Generate",
                 _gen(steering=[_cond(mode=pb.ADD, strength=2)]), DENIED, "steering[0]"),
        BadInput("compare: variant condition on an unknown direction", "Compare",
                 pb.CompareRequest(prompt="Hi", variants=[pb.Variant(name="a", steering=[_cond(direction="x")])]),
                 NOT_FOUND, "variants[0].steering[0].condition.direction"),
        BadInput("policy: alert rule on an unknown direction", "SetSteering",
                 _alerts(_rule(direction="nope")), NOT_FOUND, "policy.alerts[0].direction"),
        BadInput("policy: alert rule without an action", "SetSteering",
                 _alerts(_rule(action=pb.ALERT_ACTION_UNSPECIFIED)), INVALID, "policy.alerts[0].action"),
        BadInput("policy: alert rule with an unknown scope", "SetSteering",
                 _alerts(_rule(scope=9)), INVALID, "policy.alerts[0].scope"),
        BadInput("policy: alert rule with a NaN threshold", "SetSteering",
                 _alerts(_rule(threshold=math.inf)), INVALID, "policy.alerts[0].threshold"),
        BadInput("policy: alert rule without a calibrated threshold", "SetSteering",
                 _alerts(_rule(threshold=None)), INVALID, "policy.alerts[0].threshold"),
        BadInput("policy: STEER rule term with its own condition", "SetSteering",
                 _alerts(_rule(action=pb.STEER, steering=[_cond()])), INVALID,
                 "policy.alerts[0].steering[0].condition"),
        BadInput("policy: STEER rule that induces", "SetSteering",
                 _alerts(_rule(action=pb.STEER, steering=[_term(mode=pb.ADD, strength=1)])), DENIED,
                 "policy.alerts[0].steering[0]"),
        BadInput("policy: steering on a RECORD rule", "SetSteering",
                 _alerts(_rule(action=pb.RECORD, steering=[_term()])), INVALID, "policy.alerts[0].steering"),
        BadInput("policy: too many alert rules", "SetSteering", _alerts(*[_rule()] * 17), INVALID, "policy.alerts"),
        BadInput("tokenize: huge text", "Tokenize", pb.TokenizeRequest(text="x" * 1000 * too_long), INVALID,
                 "text"),
    ]
    # fmt: on
