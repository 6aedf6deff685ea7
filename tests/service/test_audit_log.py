"""The durable alert and audit log (issue 10, item 3): every alert and every policy and registry change, with who
made it (role, token fingerprint, peer; never the token), one JSON object per line, kept across restarts."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from steering_client import AsyncSteeringClient, ablate, pb

from steering_server.audit_log import AuditLog
from steering_server.cli import audit_log_path, build_parser
from steering_server.monitor_feed import request_event
from steering_server.types import Alert, AlertAction, ConditionScope, DirectionScores, GenerationResult, StopReason

from .fake_engine import FakeEngine
from .helpers import serving, wait_until

ADMIN = "admin-secret-token"
OBSERVER = "observer-secret-token"


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _alerting_result(request_id: str) -> GenerationResult:
    alert = Alert("misalignment", ConditionScope.PROMPT, 4.0, 3.0, AlertAction.STOP, source="policy")
    scores = DirectionScores("misalignment", 2, 4.0, None, (), True, False)
    return GenerationResult("", (), StopReason.MONITOR_ALERT, 5, (scores,), request_id, alerts=(alert,))


async def test_changes_are_recorded_with_who_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit.jsonl"
    engine = FakeEngine()
    log = AuditLog(path)
    try:
        async with serving(engine, admin_token=ADMIN, observer_token=OBSERVER, audit_log=log) as srv:
            async with AsyncSteeringClient(
                f"127.0.0.1:{srv.port}", metadata=[("authorization", f"Bearer {ADMIN}")]
            ) as admin:
                await admin.put_direction("probe", vectors={1: [1.0] * 8}, description="a probe")
                await admin.set_steering([ablate("probe")], enforced=True)
                await admin.set_steering([])
                await admin.delete_direction("probe")
                await admin.generate("not a change", max_new_tokens=2)
    finally:
        log.close()
    records = _records(path)
    assert [r["kind"] for r in records] == ["start", "PutDirection", "SetSteering", "SetSteering", "DeleteDirection"]
    fingerprint = "sha256:" + hashlib.sha256(ADMIN.encode()).hexdigest()[:12]
    for r in records[1:]:
        assert r["who"] == {"role": "admin", "token": fingerprint}
        assert str(r["peer"]).startswith("ipv4:127.0.0.1:")
        assert str(r["time"]).endswith("+00:00")
    assert ADMIN not in path.read_text() and OBSERVER not in path.read_text()
    put, enforce, clear, delete = records[1:]
    assert put["direction"]["name"] == "probe" and put["direction"]["layers"] == [1]  # type: ignore[index]
    assert len(put["direction"]["vectors_sha256"]) == 64  # type: ignore[index]
    assert enforce["policy"]["enforced"] is True  # type: ignore[index]
    assert enforce["policy"]["terms"][0]["direction"] == "probe"  # type: ignore[index]
    assert enforce["policy"]["terms"][0]["mode"] == "ABLATE"  # type: ignore[index]
    assert clear["policy"]["terms"] == [] and delete["name"] == "probe"  # type: ignore[index]

    # A restart appends: what was there stays, in order, and the new server's records follow.
    before = path.read_text()
    log = AuditLog(path)
    try:
        async with serving(FakeEngine(), audit_log=log) as srv:  # --open-admin on loopback
            async with AsyncSteeringClient(f"127.0.0.1:{srv.port}") as local:
                await local.set_steering([ablate("misalignment")])
    finally:
        log.close()
    assert path.read_text().startswith(before)
    after = _records(path)[len(records) :]
    assert [r["kind"] for r in after] == ["start", "SetSteering"]
    assert after[1]["who"] == {"role": "open-admin"}


async def test_every_alert_is_recorded_even_when_no_watcher_keeps_up(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    engine = FakeEngine()
    log = AuditLog(path)
    try:
        async with serving(engine, audit_log=log):
            stuck = engine.watch_monitor()  # a watcher that never reads: the log does not depend on it
            for i in range(300):
                engine.monitor_feed.publish(request_event(_alerting_result(f"r{i}"), rpc="Generate", front="http"))
            engine.monitor_feed.publish(request_event(None, rpc="Score", request_id="quiet"))  # no alert: no record
            await wait_until(lambda: len(_records(path)) == 301, "every alert on disk")
            assert stuck.dropped_total == 300 + 1 - stuck.capacity
            stuck.close()
    finally:
        log.close()
    alerts = _records(path)[1:]
    assert [r["request_id"] for r in alerts] == [f"r{i}" for i in range(300)]
    first = alerts[0]
    assert (first["kind"], first["rpc"], first["front_end"]) == ("alert", "Generate", "http")
    assert first["alert"] == {
        "direction": "misalignment",
        "scope": "PROMPT",
        "score": 4.0,
        "threshold": 3.0,
        "action": "STOP",
        "token_index": None,
        "source": "policy",
    }


def test_the_log_defaults_to_the_state_directory() -> None:
    parser = build_parser()
    assert audit_log_path(parser.parse_args(["serve"])) is None
    assert audit_log_path(parser.parse_args(["serve", "--state-dir", "/srv/state"])) == "/srv/state/audit.jsonl"
    explicit = parser.parse_args(["serve", "--state-dir", "/srv/state", "--audit-log", "/var/log/audit.jsonl"])
    assert audit_log_path(explicit) == "/var/log/audit.jsonl"


async def test_a_policy_alert_reaches_the_reply_the_feed_and_the_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    engine = FakeEngine()
    log = AuditLog(path)
    try:
        async with serving(engine, audit_log=log) as srv:
            async with AsyncSteeringClient(f"127.0.0.1:{srv.port}") as client:
                rule = pb.AlertRule(direction="misalignment", threshold=-100.0, scope=pb.PROMPT_SCORE, action=pb.RECORD)
                await client.set_steering(alerts=[rule])
                events = client.watch_monitor(alerts_only=True)
                first = asyncio.ensure_future(events.__anext__())
                await wait_until(lambda: engine.monitor_feed.watchers == 1, "subscribed")
                reply = await client.generate("Hello", max_new_tokens=4)
                event = await asyncio.wait_for(first, 10)
                await events.aclose()
                await client.set_steering()
    finally:
        log.close()
    assert len(reply.alerts) == 1 and list(event.alerts) == list(reply.alerts)
    assert event.request_id == reply.request_id
    (record,) = [r for r in _records(path) if r["kind"] == "alert"]
    assert record["request_id"] == reply.request_id and record["rpc"] == "Generate"
    assert record["alert"]["direction"] == "misalignment"  # type: ignore[index]
    assert record["alert"]["score"] == reply.alerts[0].score  # type: ignore[index]
    assert record["alert"]["action"] == "RECORD" and record["alert"]["scope"] == "PROMPT"  # type: ignore[index]
