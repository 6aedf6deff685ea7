"""How steering terms combine, and what their combined effect does to each registered direction: the one rule.

Every term moves one direction's projection p = h.d (d unit) by an affine map, in raw projection units:
    ABLATE a:  p -> (1 - a) p
    ADD a:     p -> p + a |v|
    CLAMP c:   p -> c_raw          (c_raw = mu + c sigma when calibrated, else c; mu and sigma at the layer steered
                                    (Direction.calibration_at), of the pooling of the positions the term steers:
                                    `last_prompt` for prompt positions, else `token`)
The terms on one direction at one layer act once, as the composition of their maps in order: the server policy's
terms first, then the request's, each list in the order given. So ABLATE 1 after ABLATE 1 is ABLATE 1 (an app that
asks for ablation on a server that enforces it gets ablation, not a reflection), and ADD then ABLATE removes the
push. The composed map p -> g p + s becomes the device coefficients alpha = 1 - g, beta = s (steer.py); terms on
different directions still act simultaneously on the pre-steering state.

Inducing is judged on the effect, not on signs: for every registered direction R and layer, the terms on R and on
every direction whose vector there has |cosine| >= COPY_COSINE with R's (uploaded near-copies and negated copies
included) are composed in R's frame; the result induces R when it amplifies p (g > 1), or when it moves p towards
a value above R's benign reference (its calibrated mean for the positions judged, or 0 uncalibrated): g = 1 and
s > 0, or g < 1 and the fixed point s / (1 - g) above the reference. Pure ablation (s = 0, 0 <= g <= 1) never
induces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .directions import Calibration, calibration_pooling
from .registry import DirectionRegistry, RegisteredDirection
from .types import SteeringMode, SteeringTerm

__all__ = ["COPY_COSINE", "Affine", "FieldTerm", "ResolvedTerm", "calibration", "calibration_pooling", "combine",
           "inducing"]

# Two unit vectors with |cosine| c: a push along one moves the other's projection by c times as much. At 0.5, half
# of any push lands on the registered direction, so a near-copy cannot induce it more cheaply than twice the
# strength along the direction itself (which the push bound, containment.MAX_PUSH_RATIO, caps). Directions that
# mean different things are far below it: random directions have |cosine| ~ 1/sqrt(hidden) (0.03 at hidden 1024),
# while directions for the same behaviour from different fine-tunes agree at > 0.8 (DESIGN.md "The science").
COPY_COSINE = 0.5


@dataclass(frozen=True)
class Affine:
    """p -> gain * p + shift, on one direction's projection at one layer (raw units)."""

    gain: float = 1.0
    shift: float = 0.0

    def then(self, other: Affine) -> Affine:
        """This map followed by `other`."""
        return Affine(other.gain * self.gain, other.gain * self.shift + other.shift)


@dataclass(frozen=True)
class FieldTerm:
    """A term with the request field that gave it (`policy.terms[0]`, `variants[1].steering[2]`)."""

    field: str
    term: SteeringTerm


@dataclass(frozen=True)
class ResolvedTerm:
    """A validated term bound to its registry entry, with its layers resolved."""

    field: str
    entry: RegisteredDirection
    mode: SteeringMode
    strength: float
    layers: tuple[int, ...]
    pooling: str = "token"  # the calibration CLAMP targets are in (calibration_pooling of the term's positions)

    def map_at(self, layer: int) -> Affine:
        if self.mode == SteeringMode.ABLATE:
            return Affine(1.0 - self.strength, 0.0)
        if self.mode == SteeringMode.ADD:
            return Affine(1.0, self.strength * self.entry.norms[layer])
        cal = calibration(self.entry, self.pooling, layer)
        target = cal.mu + self.strength * cal.sigma if cal is not None else self.strength
        return Affine(0.0, target)


def combine(terms: list[ResolvedTerm]) -> dict[tuple[int, int], tuple[Affine, list[str]]]:
    """(direction row, layer) -> the composed map of every term on that row and layer, in order, and their fields."""
    out: dict[tuple[int, int], tuple[Affine, list[str]]] = {}
    for t in terms:
        for layer in t.layers:
            key = (t.entry.row, layer)
            m, fields = out.get(key, (Affine(), []))
            out[key] = (m.then(t.map_at(layer)), [*fields, t.field])
    return out


def calibration(entry: RegisteredDirection, pooling: str, layer: int) -> Calibration | None:
    """The calibration steering along a direction uses for `pooling` at `layer` (Direction.calibration_at: that
    pooling's, else the per-token one; None where the direction has none, and planning refuses a CLAMP in z units
    there). None for an SAE feature: its calibration is of its activation, not of the decoder
    projection that steering moves, so steering along a feature is in raw units (CLAMP c sets the decoder
    projection to c) with 0 as its benign reference. Scores, conditions and alerts use calibration_for itself."""
    if entry.direction.feature is not None:
        return None
    return entry.direction.calibration_at(layer, pooling)


def inducing(terms: list[ResolvedTerm], registry: DirectionRegistry, pooling: str = "token") -> str | None:
    """A sentence naming the first registered direction the terms' net effect would induce, or None. `pooling`:
    the calibration of the positions judged (each direction's benign reference is its mean there)."""
    layers = sorted({layer for t in terms for layer in t.layers})
    for ref in registry.entries():
        for layer in layers:
            if layer not in ref.direction.vectors:
                continue
            cal = calibration(ref, pooling, layer)
            reference = cal.mu if cal is not None else 0.0
            net = Affine()
            fields: list[str] = []
            for t in terms:
                if layer not in t.layers:
                    continue
                c = registry.cosine(t.entry, ref, layer)
                if abs(c) < COPY_COSINE:
                    continue
                m, sign = t.map_at(layer), math.copysign(1.0, c)
                # In R's frame, measured from each direction's benign level: p_t - mu_t ~ sign(c) (p_R - mu_R). A
                # gain is unchanged; a shift changes sign with the copy and is taken from the copy's own benign level,
                # so clamping a near-copy to its own benign mean is a removal, not a push (p -> g p + s on the copy
                # is p_R -> g p_R + mu_R (1 - g) + sign(c) ((g - 1) mu_t + s) on R; s itself when t is R).
                # Pure ablation (shift 0) stays pure ablation in every frame: removing a direction or a copy of it
                # is the literature's removal recipe, never judged a push.
                cal_t = calibration(t.entry, pooling, layer)
                mu_t = cal_t.mu if cal_t is not None else 0.0
                shift = 0.0 if m.shift == 0 else reference * (1 - m.gain) + sign * ((m.gain - 1) * mu_t + m.shift)
                net = net.then(Affine(m.gain, shift))
                fields.append(t.field)
            if fields and _induces(net, reference):
                via = ", ".join(fields)
                return (
                    f"{via}: the net effect along {ref.direction.name!r} at layer {layer} (p -> {net.gain:.4g} p "
                    f"{net.shift:+.4g}) would induce it"
                )
    return None


def _induces(net: Affine, reference: float) -> bool:
    tol = 1e-6 * (1.0 + abs(reference))
    if net.gain > 1.0 + 1e-9:
        return True  # amplifies whatever is there
    if net.shift == 0.0:
        return False  # pure ablation (0 <= gain <= 1): towards zero, the removal recipe of the literature
    if abs(net.gain - 1.0) <= 1e-9:
        return net.shift > 0.0
    return net.shift / (1.0 - net.gain) > reference + tol
