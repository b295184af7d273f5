"""Schedules (docs/API.md §8) on the time-skipping WorkflowEnvironment: the very workflow a node runs, with a
virtual clock, so a day of firings takes milliseconds. The real-Kafka tests are in test_schedules_kafka.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actors import Client, Workflow, workflow
from actors.schedules import TYPE, fire_times, initial_state, make_spec
from actors.testing import WorkflowEnvironment

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Tick(Workflow):
    name = "tests.schedules.Tick"

    async def execute(self, n: int) -> int:
        return n


class Slow(Workflow):
    name = "tests.schedules.Slow"

    async def execute(self, seconds: float) -> str:
        await workflow.timer(seconds)
        return "slow"


def _runs(env: WorkflowEnvironment, schedule_id: str) -> list[str]:
    return sorted(w for w in env.instances if w.startswith(f"{schedule_id}@"))


def _schedule(env: WorkflowEnvironment, schedule_id: str, wf: type, *args, paused: bool = False, **spec) -> str:
    wid = f"schedule:{schedule_id}"
    env.start(TYPE, initial_state(schedule_id, make_spec(wf, args, **spec), paused), id=wid)
    return wid


def test_every_fires_with_deterministic_ids():
    env = WorkflowEnvironment(start=T0)
    _schedule(env, "tick", Tick, 7, every=1)
    env.sleep(3.5)
    assert _runs(env, "tick") == ["tick@2030-01-01T00:00:01Z", "tick@2030-01-01T00:00:02Z", "tick@2030-01-01T00:00:03Z"]
    assert all(env.status(w) == "completed" for w in _runs(env, "tick"))
    assert env.result("tick@2030-01-01T00:00:02Z") == 7


def test_cron_in_a_time_zone_and_describe():
    env = WorkflowEnvironment(start=T0)
    wid = _schedule(env, "paris", Tick, 1, cron="0 2 * * *", timezone="Europe/Paris")
    info = env.query(wid, "describe")
    # 02:00 in Paris is 01:00 UTC in winter.
    assert info["next_runs"][:2] == ["2030-01-01T01:00:00+00:00", "2030-01-02T01:00:00+00:00"]
    assert len(info["next_runs"]) == 5 and info["paused"] is False
    env.sleep(timedelta(days=2))
    assert _runs(env, "paris") == ["paris@2030-01-01T01:00:00Z", "paris@2030-01-02T01:00:00Z"]
    recent = env.query(wid, "describe")["recent_runs"]
    assert [(r["id"], r["status"]) for r in recent] == [("paris@2030-01-01T01:00:00Z", "completed"),
                                                         ("paris@2030-01-02T01:00:00Z", "completed")]


def test_cron_across_a_dst_gap():
    """02:30 does not exist in Paris on 2030-03-31: cronsim moves it to the first valid time, once."""
    spec = make_spec(Tick, (), cron="30 2 * * *", timezone="Europe/Paris")
    times = fire_times(spec, datetime(2030, 3, 30, 12, tzinfo=UTC), 2)
    assert times == [datetime(2030, 3, 31, 1, 0, tzinfo=UTC), datetime(2030, 4, 1, 0, 30, tzinfo=UTC)]


def test_pause_resume_trigger_delete():
    env = WorkflowEnvironment(start=T0)
    wid = _schedule(env, "p", Tick, 1, every=10)
    env.sleep(10.5)
    assert len(_runs(env, "p")) == 1
    env.update(wid, "pause", "maintenance")
    assert env.query(wid, "describe")["note"] == "maintenance"
    env.sleep(60)
    assert len(_runs(env, "p")) == 1, "a paused schedule fired"
    env.update(wid, "resume")
    env.sleep(10)
    assert len(_runs(env, "p")) == 2
    env.sleep(3)
    run_id = env.update(wid, "trigger")
    assert run_id == f"p@{env.now.replace(microsecond=0):%Y-%m-%dT%H:%M:%SZ}"
    assert run_id in env.instances and env.status(run_id) == "completed"
    env.update(wid, "delete")
    assert env.status(wid) == "completed"
    before = len(_runs(env, "p"))
    env.sleep(100)
    assert len(_runs(env, "p")) == before


def test_overlap_skip_and_allow_all():
    env = WorkflowEnvironment(start=T0)
    _schedule(env, "skip", Slow, 25, every=10)
    env.sleep(45)
    # fires at 10 (runs to 35), 20 and 30 skipped, 40 starts
    assert _runs(env, "skip") == ["skip@2030-01-01T00:00:10Z", "skip@2030-01-01T00:00:40Z"]
    env2 = WorkflowEnvironment(start=T0)
    _schedule(env2, "all", Slow, 25, every=10, overlap="allow_all")
    env2.sleep(45)
    assert len(_runs(env2, "all")) == 4


def test_overlap_buffer_one_and_cancel_other():
    env = WorkflowEnvironment(start=T0)
    _schedule(env, "buf", Slow, 25, every=10, overlap="buffer_one")
    env.sleep(36)
    # 10 runs to 35; 20 is buffered (30 dropped) and starts when 10 closes
    assert _runs(env, "buf") == ["buf@2030-01-01T00:00:10Z", "buf@2030-01-01T00:00:20Z"]
    env2 = WorkflowEnvironment(start=T0)
    _schedule(env2, "co", Slow, 25, every=10, overlap="cancel_other")
    env2.sleep(21)
    assert env2.status("co@2030-01-01T00:00:10Z") == "cancelled"
    assert env2.status("co@2030-01-01T00:00:20Z") in ("waiting", "running")


def test_backfill_honours_overlap_and_never_repeats_a_run():
    env = WorkflowEnvironment(start=T0 + timedelta(hours=1))
    wid = _schedule(env, "bf", Tick, 0, cron="*/15 * * * *", overlap="allow_all")
    assert env.update(wid, "backfill", T0.isoformat(), (T0 + timedelta(minutes=45)).isoformat()) == 4
    assert _runs(env, "bf") == [f"bf@2030-01-01T00:{m:02d}:00Z" for m in (0, 15, 30, 45)]
    env.update(wid, "backfill", T0.isoformat(), (T0 + timedelta(minutes=45)).isoformat())
    assert len([e for e in env.history(wid) if e["type"] == "ChildStarted"]) == 4


def test_catchup_window_after_an_outage():
    """The node was down (no timer fired) for 10 minutes: fire times in the last catchup_window seconds
    are started when the schedule wakes, older ones skipped."""
    env = WorkflowEnvironment(start=T0)
    wid = _schedule(env, "cu", Tick, 0, every=60, catchup_window=150, overlap="allow_all")
    env.sleep(61)
    assert _runs(env, "cu") == ["cu@2030-01-01T00:01:00Z"]
    # Simulate the outage: take the pending timer away and let 10 minutes pass, then restore it (late).
    pending = list(env._timers)
    env._timers.clear()
    env.now += timedelta(minutes=10)
    for _at, seq, command in pending:
        env._timers.append((env.now, seq, command))
    env.advance_to_next_timer()
    assert _runs(env, "cu") == ["cu@2030-01-01T00:01:00Z", "cu@2030-01-01T00:09:00Z", "cu@2030-01-01T00:10:00Z",
                                "cu@2030-01-01T00:11:00Z"]
    assert env.query(wid, "describe")["skipped"] == 7


def test_continue_as_new_keeps_firing():
    env = WorkflowEnvironment(start=T0)
    wid = _schedule(env, "can", Tick, 0, every=1)
    env.sleep(450)
    assert len(_runs(env, "can")) == 450
    assert env.instances[wid].history[0].get("continued_from"), "the schedule never continued-as-new"
    assert len(env.instances[wid].history) < 2000


def test_replay_of_a_schedule_is_deterministic():
    env = WorkflowEnvironment(start=T0)
    wid = _schedule(env, "rp", Slow, 15, every=10, jitter=2)
    env.sleep(60)
    env.update(wid, "pause")
    assert env.replay(wid).status == env.status(wid)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression '61 \\* \\* \\* \\*'"),
        ({"cron": "abc"}, "invalid cron expression 'abc'"),
        ({"cron": "* * * * * *"}, "expected 5 fields"),
        ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"cron": "0 2 * * *", "every": 5}, "exactly one of cron"),
        ({}, "exactly one of cron"),
        ({"every": 0}, "every must be more than zero"),
        ({"every": -5}, "every must be more than zero"),
        ({"every": 0.5}, "at least 1 second"),
        ({"every": 5, "overlap": "sometimes"}, "unknown overlap policy"),
    ],
)
def test_bad_input_is_refused_at_the_client_before_anything_is_sent(kwargs, message):
    client = Client(kafka="127.0.0.1:1", namespace="nowhere")  # nothing listens: sending would fail otherwise
    with pytest.raises(ValueError, match=message):
        client.schedule("bad", Tick, **kwargs)
    assert client._producer is None
