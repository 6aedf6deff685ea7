"""Compare's variants: the defaults, and what each variant runs under the server policy (one rule for every engine).

A variant's steering runs exactly as given, except under an enforced policy, which no request escapes: there the
policy's terms run first and the variant's are composed after them (composition.py), and the default variants are
labelled for what they run. Defaults:
    no policy          "unsteered" and "<mode>-<direction>": the removal recipe of the monitored direction (the first
                       one named in `monitor.directions`, else the first registered), ABLATE 1 unless the direction
                       declares another (directions.Removal)
    policy, optional   "unsteered" and "policy"
    policy, enforced   "policy" and "policy+<mode>-<direction>"
"""

from __future__ import annotations

from .directions import Direction
from .errors import InvalidArgumentError
from .types import SteeringPolicy, SteeringPositions, Variant

__all__ = ["default_variants", "removal_variant", "variant_ignores_policy"]


def removal_variant(direction: Direction, prefix: str = "") -> Variant:
    r = direction.removal
    term = r.term(direction.name)
    where = "" if r.positions == SteeringPositions.ALL else f"{r.positions.name.lower()}-"  # e.g. clamp-prompt-m
    return Variant(f"{prefix}{r.mode.name.lower()}-{where}{direction.name}", (term,))


def default_variants(policy: SteeringPolicy, monitored: Direction | None) -> tuple[Variant, ...]:
    """`monitored`: the direction whose removal is compared (None when no direction is registered)."""
    if policy.terms and not policy.enforced:
        return (Variant("unsteered", ()), Variant("policy", policy.terms))
    if monitored is None:
        raise InvalidArgumentError("variants", "no variants given and no direction registered to remove")
    if policy.enforced:
        return (Variant("policy", ()), removal_variant(monitored, "policy+"))
    return (Variant("unsteered", ()), removal_variant(monitored))


def variant_ignores_policy(policy: SteeringPolicy) -> bool:
    """The GenerationRequest.ignore_policy a variant runs with: variants are exact unless the policy is enforced."""
    return not policy.enforced
