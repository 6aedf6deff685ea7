"""Directions: per-layer vectors with a monitor layer, calibration and provenance (plain data, no device state).

Layer l is the output of decoder block l (Hugging Face `hidden_states[l + 1]`).

A direction may be an SAE feature (`Direction.feature`): its stored vector is the feature's decoder column (what
steering moves along) and the monitor reads the feature's activation instead of a projection: the projection of
the residual on the encoder row's unit direction, turned into JumpReLU(w_enc . (h - b_dec) + b_enc) on the host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

from .errors import InvalidArgumentError
from .names import validate_direction_name
from .types import ConditionScope, SteeringCondition, SteeringMode, SteeringPositions, SteeringTerm

__all__ = [
    "DEFAULT_REMOVAL",
    "FEATURE_ACTIVATIONS",
    "POOLINGS",
    "Calibration",
    "Direction",
    "Feature",
    "Provenance",
    "Removal",
    "scope_pooling",
    "validate_direction_name",
]

# Calibration is stored per pooling because the three have different spreads (DESIGN.md "Calibration").
POOLINGS = ("token", "response_mean", "last_prompt")


def scope_pooling(scope: ConditionScope) -> str:
    """The pooling whose scores a condition or alert scope reads: PROMPT the last prompt token, RUNNING each token."""
    return "last_prompt" if scope == ConditionScope.PROMPT else "token"


def calibration_pooling(positions: SteeringPositions) -> str:
    """The calibration a CLAMP's z units are in: prompt positions are calibrated at the last prompt token, every
    other steering at answer tokens."""
    return "last_prompt" if positions in (SteeringPositions.PROMPT, SteeringPositions.LAST_PROMPT) else "token"

_MAX_UINT32 = (1 << 32) - 1  # counts travel as uint32 in the API
# Free text a direction carries into every ListDirections answer.
_TEXT_LIMITS = {"description": 4096, "method": 256, "created_at": 64, "model_id": 512}


@dataclass(frozen=True)
class Calibration:
    """Benign-text statistics of the raw projection at the monitor layer, for one pooling."""

    mu: float
    sigma: float
    threshold: float | None = None  # z threshold chosen for a target false-positive rate
    target_fpr: float | None = None
    n: int = 0

    def z(self, p: float) -> float:
        return (p - self.mu) / self.sigma


@dataclass(frozen=True)
class Removal:
    """How to remove a direction (its removal recipe): the steering Compare runs against unsteered by default.
    ABLATE 1 (Soligo et al.) unless the direction says otherwise, e.g. CLAMP 0: set the projection to its benign
    mean, which the model organism's review found better than zero-ablation."""

    mode: SteeringMode = SteeringMode.ABLATE
    strength: float = 1.0
    positions: SteeringPositions = SteeringPositions.ALL  # e.g. PROMPT: the model organism's persona removal
    layers: tuple[int, ...] = ()  # (): the mode's default (planning: CLAMP at the monitor layer, else it and above)

    def term(self, direction: str, condition: SteeringCondition | None = None, from_layer: int = 0) -> SteeringTerm:
        """The recipe as a steering term on `direction` (Compare's default variant, an alert rule's STEER), on its
        layers at or above `from_layer` (a condition read at the monitor layer gates only steering from there up;
        none left: the mode's default layers)."""
        layers = tuple(layer for layer in self.layers if layer >= from_layer)
        return SteeringTerm(direction, self.mode, self.strength, layers, self.positions, condition)

    def validate(self, field_name: str = "removal") -> Removal:
        """A removal never induces: ABLATE in (0, 1], CLAMP <= 0 (z or raw units), ADD < 0."""
        s = self.strength
        ok = math.isfinite(s) and (
            (self.mode == SteeringMode.ABLATE and 0 < s <= 1)
            or (self.mode == SteeringMode.CLAMP and -100 <= s <= 0)
            or (self.mode == SteeringMode.ADD and -100 <= s < 0)
        )
        if not ok:
            raise InvalidArgumentError(
                field_name,
                f"{self.mode.name} {s:g} is not a removal (ABLATE in (0, 1], CLAMP in [-100, 0], ADD in [-100, 0))",
            )
        if len(set(self.layers)) != len(self.layers) or any(layer < 0 for layer in self.layers):
            raise InvalidArgumentError(f"{field_name}.layers", f"must be distinct layer indices, got "
                                       f"{list(self.layers[:8])}{' ...' if len(self.layers) > 8 else ''}")
        return self


DEFAULT_REMOVAL = Removal()


FEATURE_ACTIVATIONS = ("jumprelu", "relu")


@dataclass(frozen=True)
class Feature:
    """One SAE latent as a monitor: activation = act(w_enc . (h - b_dec) + b_enc) with h the residual at the
    direction's monitor layer. The device reads p = h . e (e = encoder / |encoder|, one more row of the direction
    table), so the pre-activation is |encoder| p - b_dec_proj + bias.

    activation "jumprelu" (SAE-Lens JumpReLUSAE): ReLU(pre) where pre > threshold, else 0; "relu" (a standard SAE):
    ReLU(pre), threshold unused (0)."""

    encoder: torch.Tensor  # (hidden,) the latent's column of W_enc [d_in, d_sae], fp32
    bias: float  # b_enc[i]
    threshold: float = 0.0  # JumpReLU threshold[i]
    b_dec_proj: float = 0.0  # w_enc . b_dec (0 when the SAE does not subtract b_dec from its input)
    activation: str = "jumprelu"
    index: int = 0  # the latent's index in the SAE
    source: str = ""  # what it was read from, e.g. "sae-lens jumprelu blocks.1.hook_resid_post"

    @property
    def encoder_norm(self) -> float:
        return float(self.encoder.norm())

    def activation_of(self, projection: float) -> float:
        """The feature's activation from p = h . (encoder / |encoder|), the raw reading of its monitor row.
        NaN (a position never read) stays NaN."""
        if not math.isfinite(projection):
            return projection
        pre = self.encoder_norm * projection - self.b_dec_proj + self.bias
        if self.activation == "jumprelu" and not pre > self.threshold:
            return 0.0
        return max(pre, 0.0)

    def validate(self, hidden_size: int, field_name: str = "feature") -> Feature:
        if self.activation not in FEATURE_ACTIVATIONS:
            raise InvalidArgumentError(
                f"{field_name}.activation", f"unknown activation {self.activation[:40]!r} (use jumprelu or relu)"
            )
        e = self.encoder.detach().to("cpu", torch.float32).contiguous()
        if e.ndim != 1 or e.shape[0] != hidden_size:
            raise InvalidArgumentError(
                f"{field_name}.encoder", f"has shape {tuple(e.shape)}, the model's hidden size is {hidden_size}"
            )
        if not bool(torch.isfinite(e).all()):
            raise InvalidArgumentError(f"{field_name}.encoder", "has NaN or infinite values")
        norm = float(e.norm())
        if not (math.isfinite(norm) and norm >= 1e-8):
            raise InvalidArgumentError(f"{field_name}.encoder", "is all zeros or its norm overflows float32")
        for key in ("bias", "threshold", "b_dec_proj"):
            if not math.isfinite(getattr(self, key)):
                raise InvalidArgumentError(f"{field_name}.{key}", "must be finite")
        if self.index < 0:
            raise InvalidArgumentError(f"{field_name}.index", "must be >= 0")
        if len(self.source) > 256:
            raise InvalidArgumentError(f"{field_name}.source", "at most 256 characters")
        return replace(self, encoder=e)


@dataclass(frozen=True)
class Provenance:
    model_id: str = ""
    config_hash: str = ""
    tokenizer_hash: str = ""


@dataclass(frozen=True)
class Direction:
    """A named direction. `vectors[l]` is the stored (unnormalised) vector for layer l, shape (hidden,), fp32."""

    name: str
    vectors: dict[int, torch.Tensor]
    monitor_layer: int
    calibration: dict[str, Calibration] = field(default_factory=dict)  # pooling -> stats at monitor_layer
    # layer -> pooling -> stats at another layer. Scores are read at monitor_layer only; these give a CLAMP in z units
    # its target where it acts elsewhere (each layer's benign level differs: the organism's persona reads +15 at the
    # last prompt token of layer 0 and -39 at layer 4), so a removal can clamp several layers.
    layer_calibration: dict[int, dict[str, Calibration]] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)
    method: str = ""
    n_examples: int = 0
    created_at: str = ""
    description: str = ""
    removal: Removal = DEFAULT_REMOVAL
    # An SAE feature: the monitor reads its activation (Feature), steering acts along `vectors` (its decoder column).
    feature: Feature | None = None

    @property
    def monitor_vector(self) -> torch.Tensor:
        """The vector the monitor projects on at monitor_layer: the feature's encoder row, else the stored vector."""
        return self.feature.encoder if self.feature is not None else self.vectors[self.monitor_layer]

    def score_of(self, projection: float) -> float:
        """The uncalibrated score from the projection on the unit monitor vector: the feature's activation for a
        feature, else the projection itself. Calibration (mu, sigma) is of this value."""
        return self.feature.activation_of(projection) if self.feature is not None else projection

    def calibration_for(self, pooling: str) -> Calibration | None:
        """The calibration `pooling` scores are z-scored with: that pooling's, else the per-token one (so every
        score of a calibrated direction is a z-score). For an SAE feature it is of the activation (score_of)."""
        return self.calibration.get(pooling, self.calibration.get("token"))

    def calibration_at(self, layer: int, pooling: str) -> Calibration | None:
        """calibration_for at `layer`: the monitor layer's, else that layer's (layer_calibration); None where the
        direction has none."""
        table = self.calibration if layer == self.monitor_layer else self.layer_calibration.get(layer, {})
        return table.get(pooling, table.get("token"))

    def clamp_refusal(self, layer: int, positions: SteeringPositions) -> str | None:
        """Why CLAMP at `layer` over `positions` has no target, or None when it has one. The one rule (planning,
        the removal recipe, a replaced direction under a policy): a direction whose monitor layer is calibrated for
        those positions clamps in z units, so every layer it clamps needs its own level; uncalibrated directions and
        SAE features clamp in raw units anywhere."""
        pooling = calibration_pooling(positions)
        if self.feature is not None or self.calibration_at(self.monitor_layer, pooling) is None:
            return None
        if self.calibration_at(layer, pooling) is not None:
            return None
        have = [la for la in self.layers if self.calibration_at(la, pooling) is not None]
        return (f"CLAMP strengths are z-scores of {self.name!r}'s calibration, which it has at layers {have} only; "
                f"layer {layer} has no benign level to clamp to (use ABLATE or ADD there, or register the direction "
                "with that layer calibrated)")

    def removal_refusal(self) -> str | None:
        """Why the removal recipe cannot run on this direction (a layer without a vector, or a CLAMP where it has no
        level), or None."""
        for layer in self.removal.layers:
            if layer not in self.vectors:
                return f"layer {layer} has no vector (layers {list(self.layers)})"
        if self.removal.mode == SteeringMode.CLAMP:
            for layer in self.removal.layers or (self.monitor_layer,):
                if (why := self.clamp_refusal(layer, self.removal.positions)) is not None:
                    return why
        return None

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.vectors))

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def calibrated(self) -> bool:
        return "token" in self.calibration

    def uncalibrated(self) -> Direction:
        return replace(self, calibration={}, layer_calibration={})

    def validate(self, num_layers: int, hidden_size: int, field_name: str = "direction") -> Direction:
        """Check shapes and values against a model; returns self with fp32 contiguous CPU vectors."""
        validate_direction_name(self.name, f"{field_name}.name")
        if not self.vectors:
            raise InvalidArgumentError(f"{field_name}.vectors", "direction has no vectors")
        clean: dict[int, torch.Tensor] = {}
        for layer, vec in self.vectors.items():
            where = f"{field_name}.vectors[{layer}]"
            if not 0 <= layer < num_layers:
                raise InvalidArgumentError(where, f"layer {layer} is outside 0..{num_layers - 1}")
            if vec.ndim != 1 or vec.shape[0] != hidden_size:
                raise InvalidArgumentError(
                    where, f"vector has shape {tuple(vec.shape)}, the model's hidden size is {hidden_size}"
                )
            v = vec.detach().to("cpu", torch.float32).contiguous()
            if not torch.isfinite(v).all():
                raise InvalidArgumentError(where, "vector has NaN or infinite values")
            norm = float(v.double().norm())  # float64: a vector of float32-max values has a finite norm there
            if norm < 1e-8:
                raise InvalidArgumentError(where, "vector is all zeros (no direction)")
            if not math.isfinite(float(v.norm())):
                raise InvalidArgumentError(where, f"vector's norm ({norm:.3g}) overflows float32; scale it down")
            clean[layer] = v
        if self.monitor_layer not in clean:
            raise InvalidArgumentError(
                f"{field_name}.monitor_layer",
                f"monitor layer {self.monitor_layer} has no vector (layers {sorted(clean)})",
            )
        self.removal.validate(f"{field_name}.removal")
        feature = self.feature.validate(hidden_size, f"{field_name}.feature") if self.feature is not None else None
        _validate_calibration(self.calibration, f"{field_name}.calibration")
        for layer, table in self.layer_calibration.items():
            where = f"{field_name}.layer_calibration[{layer}]"
            if layer == self.monitor_layer or layer not in clean:
                raise InvalidArgumentError(where, f"must name a layer with a vector other than the monitor layer "
                                           f"{self.monitor_layer} (layers {sorted(clean)})")
            if feature is not None:
                raise InvalidArgumentError(where, "an SAE feature is calibrated at its own layer only")
            if not self.calibrated or "token" not in table:
                raise InvalidArgumentError(where, "needs a 'token' pooling, and the monitor layer calibrated too")
            _validate_calibration(table, where)
        if (why := self.removal_refusal()) is not None:
            raise InvalidArgumentError(f"{field_name}.removal.layers", why)
        if not 0 <= self.n_examples <= _MAX_UINT32:
            raise InvalidArgumentError(f"{field_name}.n_examples", f"must be in 0..{_MAX_UINT32}")
        for key, limit in _TEXT_LIMITS.items():
            text = getattr(self, key) if key != "model_id" else self.provenance.model_id
            if len(text) > limit:
                raise InvalidArgumentError(f"{field_name}.{key}", f"at most {limit} characters")
        return replace(self, vectors=clean, feature=feature)


def _validate_calibration(table: Mapping[str, Calibration], field_name: str) -> None:
    for pooling, cal in table.items():
        where = f"{field_name}[{pooling!r}]"
        if pooling not in POOLINGS:
            raise InvalidArgumentError(where, f"unknown pooling (use {', '.join(POOLINGS)})")
        if not (math.isfinite(cal.mu) and math.isfinite(cal.sigma) and cal.sigma > 0):
            raise InvalidArgumentError(where, "needs finite mu and sigma > 0")
        if cal.threshold is not None and not math.isfinite(cal.threshold):
            raise InvalidArgumentError(f"{where}.threshold", "must be finite")
        if cal.target_fpr is not None and not 0 <= cal.target_fpr <= 1:
            raise InvalidArgumentError(f"{where}.target_fpr", "must be in [0, 1]")
        if not 0 <= cal.n <= _MAX_UINT32:
            raise InvalidArgumentError(f"{where}.n", f"must be in 0..{_MAX_UINT32}")
