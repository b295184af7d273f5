"""Replay testing (docs/API.md §11): recorded histories checked against new code before a deploy.

The unit tests record a history with ``WorkflowEnvironment`` (no broker) and replay it against changed
code; the CLI test records one on real Kafka and PostgreSQL, exports it with ``history --json`` and
replays it with ``metamorph replay`` against an unchanged and a changed app, in real processes, because
what CI sees is the exit status.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from actors import NondeterminismError, Workflow, activity, signal, workflow
from actors.engine import definitions
from actors.interfaces.cli import main
from actors.testing import WorkflowEnvironment, replay
from projections.apply import body
from tests.stack import running_stack

ROOT = Path(__file__).resolve().parents[1]


@activity(name="rpt.charge")
def charge(order_id: str) -> str:
    return f"charged-{order_id}"


@activity(name="rpt.refund")
def refund(order_id: str) -> str:
    return f"refunded-{order_id}"


class RecordedOrder(Workflow):
    name = "rpt.Order"

    def __init__(self) -> None:
        self.approved = False

    async def execute(self, order_id: str) -> str:
        charged = await workflow.activity(charge, order_id)
        await workflow.wait(lambda: self.approved)
        return charged

    @signal
    def approve(self) -> None:
        self.approved = True


def _recorded() -> list[dict]:
    env = WorkflowEnvironment()
    wid = env.start(RecordedOrder, "A-1", id="order-A-1")
    env.signal(wid, "approve")
    assert env.result(wid) == "charged-A-1"
    return env.history(wid)


def _as_exported(history: list[dict], workflow_id: str) -> list[dict]:
    """The JSON shape ``history --json`` writes: the projector's ``data`` plus the envelope columns."""
    out = []
    for e in history:
        row = {**body(e), "workflow_id": workflow_id, "seq": e["seq"], "type": e["type"],
               "at": e["at"].isoformat(), "run_id": e["run_id"], "status": e.get("status")}  # fmt: skip
        out.append(json.loads(json.dumps(row)))
    return out


def _changed_class(monkeypatch: pytest.MonkeyPatch, swap: bool) -> type:
    """New code for the same type name; the registry entry is restored after the test."""
    monkeypatch.setitem(definitions._workflows, RecordedOrder.name, RecordedOrder)

    class ChangedOrder(Workflow):
        name = "rpt.Order"

        def __init__(self) -> None:
            self.approved = False

        async def execute(self, order_id: str) -> str:
            if swap:  # an activity swapped for another
                return await workflow.activity(refund, order_id)
            await workflow.wait(lambda: self.approved)  # the activity removed
            return "done"

        @signal
        def approve(self) -> None:
            self.approved = True

    return ChangedOrder


def test_replay_of_unchanged_code_passes_from_engine_events_and_exported_json() -> None:
    history = _recorded()
    assert replay(history, RecordedOrder) == "completed"
    assert replay(_as_exported(history, "order-A-1"), RecordedOrder) == "completed"
    assert replay({"workflow_id": "order-A-1", "events": _as_exported(history, "order-A-1")}, RecordedOrder) == "completed"


def test_a_swapped_activity_raises_nondeterminism_naming_id_seq_recorded_and_issued(monkeypatch) -> None:
    exported = _as_exported(_recorded(), "order-A-1")
    changed = _changed_class(monkeypatch, swap=True)
    with pytest.raises(NondeterminismError) as caught:
        replay(exported, changed)
    err = caught.value
    scheduled = next(e for e in exported if e["type"] == "ActivityScheduled")
    assert (err.workflow_id, err.seq) == ("order-A-1", scheduled["seq"])
    assert err.recorded == "ActivityScheduled(rpt.charge)" and err.issued == "ActivityScheduled(rpt.refund)"
    assert "order-A-1" in str(err) and "rpt.refund" in str(err)


def test_a_removed_activity_is_a_recorded_decision_the_code_did_not_issue(monkeypatch) -> None:
    history = _recorded()
    changed = _changed_class(monkeypatch, swap=False)
    with pytest.raises(NondeterminismError) as caught:
        replay(history, changed)
    assert caught.value.recorded == "ActivityScheduled(rpt.charge)" and caught.value.issued is None


def test_a_history_of_another_type_or_not_a_history_is_refused() -> None:
    class Other(Workflow):
        name = f"rpt.Other{uuid.uuid4().hex[:6]}"

        async def execute(self) -> None:
            return None

    with pytest.raises(ValueError, match="rpt.Order"):
        replay(_recorded(), Other)
    with pytest.raises(ValueError, match="WorkflowStarted"):
        replay([{"type": "TimerFired", "seq": 3, "at": datetime.now().isoformat()}], RecordedOrder)


# -- the CLI on real Kafka and PostgreSQL ----------------------------------------------------------------
def _metamorph(*argv: str) -> subprocess.CompletedProcess[str]:
    """``metamorph ARGV`` as CI runs it: a fresh process (so v1 and v2 of the app never share a registry)."""
    return subprocess.run(
        [sys.executable, "-m", "actors.interfaces.cli", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_history_json_replays_cleanly_against_the_same_code_and_fails_against_a_change(
    capsys, kafka, pg_server, tmp_path
) -> None:
    from tests.apps import replay_v1

    with running_stack(kafka, pg_server, tmp_path / "node", prefix="rp") as (client, _node, ns):
        opts = ["--kafka", kafka, "--postgres", client.postgres, "--namespace", ns]
        ids = [f"order-{uuid.uuid4().hex[:6]}" for _ in range(2)]
        for wid in ids:
            client.start(replay_v1.ReplayOrder, wid, id=wid)
        client.get(ids[0]).signal("approve")
        assert client.get(ids[0]).result(timeout=60) == [f"charged-{ids[0]}", f"shipped-{ids[0]}"]
        waiting = client.get(ids[1])
        deadline = time.monotonic() + 30
        while waiting.status() != "waiting" and time.monotonic() < deadline:
            time.sleep(0.1)

        exports = tmp_path / "histories"
        exports.mkdir()
        for wid in ids:
            assert main(["history", wid, "--json", *opts]) == 0
            (exports / f"{wid}.json").write_text(capsys.readouterr().out)
        exported = json.loads((exports / f"{ids[0]}.json").read_text())
        assert replay(exported, replay_v1.ReplayOrder) == "completed"
        assert replay(client.get(ids[1]).history(), replay_v1.ReplayOrder) == "waiting"

        same = _metamorph("replay", "--app", "tests.apps.replay_v1", str(exports))
        assert (same.returncode, same.stdout) == (0, ""), same.stderr
        assert "replayed 2 history(ies): all deterministic" in same.stderr

        changed = _metamorph("replay", "--app", "tests.apps.replay_v2", str(exports / f"{ids[0]}.json"), str(exports))
        assert changed.returncode == 1, changed.stderr
        lines = changed.stdout.splitlines()
        seq = next(e["seq"] for e in exported if e["type"] == "ActivityScheduled")
        assert len(lines) == 3 and all("recorded ActivityScheduled(rpl.charge), code issued ActivityScheduled(rpl.ship)" in x for x in lines)
        assert f"workflow {ids[0]} seq {seq}:" in lines[0] and any(f"workflow {ids[1]} seq" in x for x in lines)

        from_db = _metamorph("replay", "--app", "tests.apps.replay_v2", "--type", "rpl.Order", "--last", "5", *opts)
        assert from_db.returncode == 1 and len(from_db.stdout.splitlines()) == 2, from_db.stderr
        from_db = _metamorph("replay", "--app", "tests.apps.replay_v1", "--type", "rpl.Order", "--last", "1", *opts)
        assert (from_db.returncode, from_db.stdout) == (0, ""), from_db.stderr

        (tmp_path / "broken.json").write_text("{not json")
        bad = _metamorph("replay", "--app", "tests.apps.replay_v1", str(tmp_path / "broken.json"))
        assert bad.returncode == 2 and "broken.json" in bad.stderr and "not JSON" in bad.stderr
        missing = _metamorph("replay", "--app", "tests.apps.replay_v1", str(tmp_path / "nope.json"))
        assert missing.returncode == 2 and "nope.json" in missing.stderr
        other = _metamorph("replay", "--app", "tests.apps.runtime_app", str(exports))
        assert other.returncode == 2 and "unknown workflow type 'rpl.Order'" in other.stderr
