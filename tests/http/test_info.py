"""`GET /v1/steering/info`, what the page reads: the model, the limits, the directions and the policy."""

from __future__ import annotations

import httpx

from steering_server.types import AlertAction, AlertRule, ConditionScope, SteeringMode, SteeringPolicy, SteeringTerm

from ..service.fake_engine import FakeEngine


async def test_info_shows_the_limits_directions_and_policy(fake: FakeEngine, fake_http: httpx.AsyncClient) -> None:
    fake.set_policy(SteeringPolicy(
        terms=(SteeringTerm("misalignment", SteeringMode.ABLATE, 1.0),),
        alerts=(AlertRule("misalignment", AlertAction.RECORD, 3.0, ConditionScope.RUNNING),),
    ))
    info = (await fake_http.get("/v1/steering/info")).json()
    assert info["model"]["id"] == fake.model_info().model_id
    assert info["limits"]["allow_red_team"] is False  # the page's ADD slider stops at 0
    assert [d["name"] for d in info["directions"]] == ["misalignment"]
    assert info["directions"][0]["removal"] == {"mode": "ablate", "strength": 1.0, "positions": "all", "layers": []}
    assert info["directions"][0]["clamp_layers"] == []  # where CLAMP may act besides the monitor layer
    assert info["policy"]["terms"] == [
        {"direction": "misalignment", "mode": "ablate", "strength": 1.0, "layers": [], "positions": "all"}
    ]
    assert info["policy"]["alerts"] == [
        {"direction": "misalignment", "action": "record", "threshold": 3.0, "scope": "running", "steering": []}
    ]
