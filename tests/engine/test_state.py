"""State that survives (issue 8, finding 7): directions and the policy persist atomically and are restored at start;
an enforced policy that cannot be restored keeps the engine from starting (fail closed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from steering_server.direction_files import save_direction
from steering_server.state import StateDir, StateError
from steering_server.types import AlertAction, AlertRule, SteeringMode, SteeringPolicy, SteeringTerm

from .conftest import loaded_model, random_direction, running_engine

ABLATE_UP = SteeringPolicy((SteeringTerm("up", SteeringMode.ABLATE, 1.0),), enforced=True)


async def _first_life(tmp_path: Path) -> tuple[str, tuple[tuple[str, str], ...]]:
    loaded = loaded_model()
    boot_file = tmp_path / "boot.safetensors"
    save_direction(boot_file, random_direction("boot", loaded, seed=1))
    boot = (("boot", str(boot_file)),)
    state = str(tmp_path / "state")
    async with running_engine(loaded, state_dir=state, directions=boot) as engine:
        assert engine.registry.names() == ["boot"]
        engine.put_direction(random_direction("up", loaded, seed=2))
        engine.delete_direction("boot")  # a start-up direction, deleted through the API
        engine.set_policy(ABLATE_UP)
    return state, boot


async def test_directions_deletions_and_the_policy_survive_a_restart(tmp_path: Path) -> None:
    state, boot = await _first_life(tmp_path)
    async with running_engine(loaded_model(), state_dir=state, directions=boot) as engine:
        assert engine.registry.names() == ["up"]  # the deleted start-up direction stays deleted
        assert engine.get_policy() == ABLATE_UP
        engine.set_policy(SteeringPolicy())
    async with running_engine(loaded_model(), state_dir=state, directions=boot) as engine:
        assert engine.get_policy() == SteeringPolicy()


async def test_an_enforced_policy_that_cannot_be_restored_fails_closed(tmp_path: Path) -> None:
    state, boot = await _first_life(tmp_path)
    (Path(state) / "directions" / "up.safetensors").write_bytes(b"garbage")  # the direction it needs is lost
    with pytest.raises(StateError, match="enforced policy"):
        async with running_engine(loaded_model(), state_dir=state, directions=boot):
            pass
    (Path(state) / "policy.json").write_text('{"enforced": tr')  # unreadable: was it enforced?
    with pytest.raises(StateError, match="saved policy"):
        async with running_engine(loaded_model(), state_dir=state, directions=boot):
            pass
    # Alert rules apply to every request like an enforced policy: a lost STOP rule fails closed too.
    StateDir(state).save_policy(SteeringPolicy(alerts=(AlertRule("up", AlertAction.STOP, 2.0),)))
    with pytest.raises(StateError, match=r"policy with alert rules cannot be restored.*up"):
        async with running_engine(loaded_model(), state_dir=state, directions=boot):
            pass
    # A policy that was not enforced, without alert rules, is dropped with an error in the log instead.
    StateDir(state).save_policy(SteeringPolicy(ABLATE_UP.terms, enforced=False))
    async with running_engine(loaded_model(), state_dir=state, directions=boot) as engine:
        assert engine.get_policy() == SteeringPolicy()


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from steering_server.directions import Direction
    from steering_server.state import StateDir
    from steering_server.types import SteeringMode, SteeringPolicy, SteeringTerm

    state = StateDir(sys.argv[1])
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        state.save_policy(SteeringPolicy((SteeringTerm("d", SteeringMode.ABLATE, i % 2 + 0.25),), enforced=True))
        state.save_direction(Direction("d", {0: torch.full((4096,), float(i))}, 0))
        if i % 3 == 0:
            state.delete_direction("e")
        else:
            state.save_direction(Direction("e", {1: torch.full((64,), float(i))}, 1))
    """
)


def test_kill_9_in_the_middle_of_writes_leaves_a_readable_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(state)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + 0.07 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stored = StateDir(state).load(num_layers=4)  # never a half-written file
        assert stored.policy is not None and stored.policy.enforced
        assert stored.policy.terms[0].strength in (0.25, 1.25)
        by_name = {d.name: d for d in stored.directions}
        assert "d" in by_name and bool((by_name["d"].vectors[0] == by_name["d"].vectors[0][0]).all())
        assert not ("e" in by_name and "e" in stored.deleted)  # a deletion is complete or not there
        assert not list(state.rglob(".*.tmp"))  # leftovers of the interrupted write are cleared on open


def test_alert_rules_and_conditions_round_trip_through_the_policy_file(tmp_path: Path) -> None:
    from steering_server.types import AlertAction, AlertRule, ConditionScope, SteeringCondition, SteeringPositions

    conditional = SteeringTerm(
        "up", SteeringMode.ADD, -0.5, layers=(1, 2), positions=SteeringPositions.GENERATED,
        condition=SteeringCondition("boot", 1.5, ConditionScope.RUNNING),
    )
    policy = SteeringPolicy(
        (conditional,),
        enforced=True,
        alerts=(
            AlertRule("up", AlertAction.RECORD),
            AlertRule("boot", AlertAction.STOP, threshold=2.0, scope=ConditionScope.PROMPT),
            AlertRule("up", AlertAction.STEER, threshold=-1.0,
                      steering=(SteeringTerm("up", SteeringMode.ABLATE, 1.0),)),
        ),
    )
    StateDir(tmp_path).save_policy(policy)
    assert StateDir(tmp_path).load(num_layers=4).policy == policy
